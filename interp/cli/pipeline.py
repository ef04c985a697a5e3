"""The whole study in one command (``anydepth demo``): a chain of the documented CLI subcommands.

Each stage is the same ``anydepth <command> …`` a user would type, run in-process. Its output folder is named
by a hash of its arguments and of the stages it reads from (config-addressed), and a ``stage.json`` written last
marks it finished, so rerunning the demo skips finished stages and resumes an interrupted extraction.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import interp
from interp import UserError
from interp.cli.naming import run_slug


@dataclass
class DemoConfig:
    """Options of ``anydepth demo`` (defaults fit ≤ 20 minutes on 2 CPU cores with the embedded default)."""

    model: str = field(default="qwen2.5-coder-0.5b-instruct", metadata={
        "help": "catalogue name, local path or hub id"})
    data: tuple[str, ...] = field(default=("demo",), metadata={
        "help": "datasets (need harmful and benign prompts between them; see `anydepth datasets list`)"})
    limit: int | None = field(default=None, metadata={"help": "seeded sample of prompts per dataset"})
    max_new_tokens: int = field(default=64, metadata={"help": "continuation length (after a forced opener)"})
    depths: str = field(default="0:64:8", metadata={"help": "extraction depth schedule start:end:step"})
    eval_depths: tuple[int, ...] = field(default=(0, 8, 16, 32, 64), metadata={
        "help": "deep-prefill evaluation depths"})
    eval_limit: int = field(default=20, metadata={"help": "prompts per dataset in the guard evaluation"})
    lookahead: int = field(default=12, metadata={"help": "ADA-RK / base refusal lookahead tokens"})
    stride: int = field(default=16, metadata={
        "help": "guard check stride: the threshold is calibrated per answer for it, and over-refusal runs with it"})
    batch_size: int = field(default=8, metadata={"help": "prompts per batch (generation and evaluation)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda"})
    out: str = field(default="runs/demo", metadata={"help": "output root (stages live in hashed subfolders)"})
    skip_eval: bool = field(default=False, metadata={"help": "stop after the probe sweep"})
    calib_fraction: float = field(default=0.25, metadata={
        "help": "prompt groups (twin pairs) kept for the threshold only"})
    test_fraction: float = field(default=0.25, metadata={
        "help": "prompt groups kept for held-out numbers (every evaluation runs on these only)"})


@dataclass
class Stage:
    """One step: ``anydepth <argv…> <output options>`` (or a small Python step ``fn(folder)``)."""

    name: str
    argv: list[str]
    inputs: list[str] = field(default_factory=list)  # folder names of the stages it reads
    outputs: Callable[[Path], list[str]] = lambda folder: []  # output options appended at run time
    fn: Callable[[Path], None] | None = None

    def key(self) -> str:
        blob = json.dumps({"argv": self.argv, "inputs": self.inputs, "version": interp.__version__})
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


class Runner:
    """Runs stages in order, skipping the ones whose ``stage.json`` says they finished with the same key."""

    def __init__(self, root: Path, total: int):
        self.root, self.total, self.done = root, total, 0
        self.timings: dict[str, dict] = {}

    def folder(self, stage: Stage) -> Path:
        return self.root / f"{stage.name}-{stage.key()}"

    def run(self, stage: Stage) -> Path:
        from interp.cli.main import main

        self.done += 1
        head = f"[{self.done}/{self.total}] {stage.name}"
        folder = self.folder(stage)
        marker = folder / "stage.json"
        if marker.exists() and json.loads(marker.read_text()).get("key") == stage.key():
            print(f"{head}: finished earlier, reusing {folder}", flush=True)
            self.timings[stage.name] = {"seconds": 0.0, "reused": True}
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        if stage.fn is not None:
            print(f"{head}", flush=True)
            stage.fn(folder)
            argv = stage.argv
        else:
            argv = [*stage.argv, *stage.outputs(folder)]
            print(f"{head}: anydepth {' '.join(argv)}", flush=True)
            code = main(argv)
            if code:
                raise UserError(f"stage {stage.name} failed (exit {code}); fix the cause and rerun: finished "
                                "stages are reused")
        seconds = time.perf_counter() - start
        self.timings[stage.name] = {"seconds": round(seconds, 1), "reused": False}
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": stage.key(), "argv": argv, "seconds": seconds}, indent=1) + "\n")
        os.replace(tmp, marker)
        return folder


def _merge_jsonl(parts: Sequence[Path], out: Path) -> None:
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        for p in parts:
            fh.write(p.read_text())
    os.replace(tmp, out)


def run_demo(cfg: DemoConfig) -> Path:
    """Run every stage; returns the path of the report."""
    from interp.cli.report import write_report

    if not cfg.data:
        raise UserError("give at least one dataset with --data")
    root = Path(cfg.out) / run_slug(cfg.model)
    runner = Runner(root, total=len(cfg.data) + 4 + (0 if cfg.skip_eval else 3))
    common = ["--model", cfg.model, "--device", cfg.device]
    limit = ["--limit", str(cfg.limit)] if cfg.limit else []
    generated = [runner.run(Stage(
        f"generate-{run_slug(name)}",
        ["generate", *common, "--data", name, *limit, "--mode", "matched", "--max-new-tokens", str(cfg.max_new_tokens),
         "--gen-batch-size", str(cfg.batch_size)],
        outputs=lambda f: ["--out", str(f / "continuations.jsonl")])) for name in cfg.data]
    parts = [g / "continuations.jsonl" for g in generated]
    cont_dir = runner.run(Stage("continuations", ["merge"], [g.name for g in generated],
                                fn=lambda f: _merge_jsonl(parts, f / "continuations.jsonl")))
    ext_dir = runner.run(Stage(
        "extract", ["extract", *common, "--continuations", str(cont_dir / "continuations.jsonl"),
                    "--depths", cfg.depths, "--layers", "all", "--hooks", "resid_post", "--positions", "span"],
        [cont_dir.name], outputs=lambda f: ["--out", str(f / "store.h5")]))
    store = ext_dir / "store.h5"
    sweep_dir = runner.run(Stage("sweep", ["sweep", "--store", str(store)], [ext_dir.name],
                                 outputs=lambda f: ["--out", str(f)]))
    probes_dir = runner.run(Stage("train", ["train", "--store", str(store), "--stride", str(cfg.stride),
                                            "--calib-fraction", str(cfg.calib_fraction),
                                            "--test-fraction", str(cfg.test_fraction)], [ext_dir.name],
                                  outputs=lambda f: ["--out", str(f)]))
    eval_dirs: dict[str, Path] = {}
    if not cfg.skip_eval:
        shared = [*common, "--probes", str(probes_dir), "--datasets", *cfg.data, "--limit", str(cfg.eval_limit),
                  "--lookahead", str(cfg.lookahead), "--base-lookahead", str(cfg.lookahead),
                  "--batch-size", str(cfg.batch_size)]
        modes = {"deep-prefill": ["--depths", *map(str, cfg.eval_depths), "--continuation", "prefill"],
                 "over-refusal": ["--stride", str(cfg.stride), "--max-new-tokens", str(cfg.max_new_tokens)],
                 "cost": ["--contexts", "128", "512", "--strides", "25", "--max-new-tokens", "50"]}
        for mode, extra in modes.items():
            eval_dirs[mode] = runner.run(Stage(f"evaluate-{mode}", ["evaluate", mode, *shared, *extra],
                                               [probes_dir.name], outputs=lambda f: ["--out", str(f)]))
    report = write_report(root, cfg, store=store, sweep_dir=sweep_dir, probes_dir=probes_dir, eval_dirs=eval_dirs,
                          timings=runner.timings)
    print(f"report: {report}")
    return report
