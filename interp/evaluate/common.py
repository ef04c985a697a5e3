"""Shared pieces of the evaluation harness: confidence intervals, model/probe loading, result writing."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from interp import UserError
from interp.config import save_config
from interp.guard.aggregate import AggregateConfig, Aggregation
from interp.probes.calibration import check_threshold


@dataclass
class GuardModel:
    """A model with the identity the probe set is checked against."""

    model: Any
    tokenizer: Any
    model_id: str
    weights_sha256: str | None
    provenance: dict


def load_guard_model(spec: str, device: str = "auto", dtype: str = "auto") -> GuardModel:
    """``tiny[:arch]`` (random test model, no download) or anything :func:`interp.model.loading.load_model` takes."""
    if spec == "tiny" or spec.startswith("tiny:"):
        from interp.testing import tiny_model

        arch = spec.partition(":")[2] or "qwen2"
        model, tok = tiny_model(arch, n_layers=4, d_model=128, d_mlp=256)
        return GuardModel(model, tok, f"tiny-{arch}", None, {"model_id": f"tiny-{arch}", "source": "tiny"})
    from interp.model.loading import load_model

    loaded = load_model(spec, device=device, dtype=dtype)
    return GuardModel(loaded.model, loaded.tokenizer, loaded.model_id, loaded.weights_sha256, loaded.provenance())


def load_probes(path: str | None):
    """A saved ProbeSet, or ``None`` when no path is given."""
    if not path:
        return None
    from interp.probes.probeset import ProbeSet

    return ProbeSet.load(path)


def random_probes(model, spans, layer: int | None = None, seed: int = 0, threshold: float = 0.5):
    """A random-direction ProbeSet (for timing only: its scores mean nothing)."""
    from interp.model.context import text_config
    from interp.probes.probeset import ProbeSet

    cfg = text_config(model)
    n, d = cfg.num_hidden_layers, cfg.hidden_size
    layer = n // 2 if layer is None else layer
    w = np.random.default_rng(seed).normal(size=(1, d)) / math.sqrt(d)
    return ProbeSet(layers=[layer], weights=w, bias=np.zeros(1), hook="blocks.{layer}.hook_resid_post",
                    position="probe", best_layer=layer, threshold=threshold, kind="random",
                    provenance={"template_hash": spans.template_hash, "span_ids": list(spans.span_ids)})


def write_result(out_dir: str | Path, name: str, payload: dict, config: Any) -> Path:
    """Write ``<name>.json`` (atomically) and the config beside it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    tmp.replace(path)
    save_config(config, out / f"{name}.config.json")
    return path


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (set, tuple)):
        return list(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def require(cond: bool, message: str) -> None:
    if not cond:
        raise UserError(message)


@dataclass
class EvalConfig(AggregateConfig):
    """Options shared by every ``anydepth evaluate`` mode."""

    model: str = field(default="qwen2.5-coder-0.5b-instruct", metadata={
        "help": "model spec (catalogue name, path, hub id) or tiny[:arch] for a smoke test"})
    probes: str | None = field(default=None, metadata={
        "help": "ProbeSet path for ADA-LP ('random' = random direction, timing/smoke only; none = skip LP)"})
    datasets: tuple[str, ...] = field(default=(), metadata={"help": "datasets (default depends on the mode)"})
    split: str | None = field(default=None, metadata={"help": "dataset split filter (e.g. PAIR for jbb_artifacts)"})
    limit: int = field(default=20, metadata={"help": "prompts per dataset (seeded sample)"})
    depths: tuple[int, ...] = field(default=(0, 5, 10, 25, 50, 100, 200, 300, 500), metadata={
        "help": "deep-prefill depths"})
    continuation: str = field(default="prefill", metadata={
        "help": "deep-prefill text: dataset (records' responses) or prefill (model's own text after an opener)",
        "choices": ("dataset", "prefill")})
    opener: str = field(default="Sure, here is", metadata={"help": "prefill-attack opener (records' target if any)"})
    stride: int = field(default=25, metadata={"help": "guard check stride (over-refusal, attacks)"})
    lookahead: int = field(default=20, metadata={"help": "ADA-RK lookahead tokens"})
    matcher: str = field(default="keyword", metadata={"help": "ADA-RK matcher", "choices": ("keyword", "prob")})
    base_lookahead: int = field(default=40, metadata={"help": "tokens the undefended model continues (deep-prefill)"})
    threshold: float | None = field(default=None, metadata={"help": "ADA-LP threshold (default: the probe set's)"})
    max_new_tokens: int | None = field(default=None, metadata={
        "help": "answer length (over-refusal, attacks; default: the answer length the probe set's threshold was "
                "calibrated at, else 128)"})
    batch_size: int = field(default=4, metadata={"help": "prompts per batch"})
    contexts: tuple[int, ...] = field(default=(256, 1024), metadata={"help": "cost: context lengths"})
    strides: tuple[int, ...] = field(default=(5, 25, 50), metadata={"help": "cost: strides for the slowdown"})
    out: str = field(default="results/evaluate", metadata={"help": "output folder"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda"})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16"})
    seed: int = field(default=0, metadata={"help": "sampling seed for the dataset subset"})
    allow_train_overlap: bool = field(default=False, metadata={
        "help": "debug only: keep prompts the probe set was trained/calibrated on (output stamped in-sample)"})
    control_arm: bool = field(default=True, metadata={
        "help": "deep-prefill: also force the same openers on benign prompts (matched-style control)"})

    def validate(self) -> None:
        """One-line errors for options that cannot work."""
        for name in ("limit", "batch_size", "stride", "lookahead", "base_lookahead", "max_new_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                hint = " (it is per dataset; there is no 'all')" if name == "limit" else ""
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}{hint}")
        check_threshold(self.threshold, optional=True)
        if any(d < 0 for d in self.depths):
            raise UserError(f"--depths must be >= 0, got {list(self.depths)}")
        Aggregation.of(self)


DEFAULT_ANSWER_LENGTH = 128


def setup_run(cfg: EvalConfig):
    """``(GuardModel, spans, probes-or-None)`` for an evaluation config; an unset ``max_new_tokens`` becomes the
    answer length the probe set was calibrated at (the deployed one), else :data:`DEFAULT_ANSWER_LENGTH`."""
    from interp.spans.derive import derive_safety_spans

    gm = load_guard_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    spans = derive_safety_spans(gm.tokenizer)
    probes = random_probes(gm.model, spans) if cfg.probes == "random" else load_probes(cfg.probes)
    if cfg.max_new_tokens is None:
        calibrated = ((getattr(probes, "schedule", None) or {}).get("answer_length") if probes is not None else None)
        cfg.max_new_tokens = int(calibrated or DEFAULT_ANSWER_LENGTH)
    return gm, spans, probes


def batches(items: list, size: int):
    for i in range(0, len(items), max(1, size)):
        yield items[i:i + size]


def records_for(cfg: EvalConfig, default: tuple[str, ...], label: str | None = None, probes=None
                ) -> tuple[list, dict]:
    """``([(dataset, record)], split)``: up to ``limit`` prompts of ``label`` per dataset, one record each (a seeded
    sample of distinct prompt groups, so no prompt is drawn twice through its copies), drawn from the prompts
    ``probes`` was neither trained nor calibrated on (:func:`interp.probes.protocol.exclude_seen`); ``split`` says
    how many were excluded."""
    import random

    from interp.data import load_dataset
    from interp.probes.protocol import exclude_seen

    out, info = [], {"n_candidates": 0, "excluded": 0, "n_eval": 0, "n_seen": 0}
    statuses = set()
    for name in cfg.datasets or default:
        recs = [(name, r) for r in load_dataset(name, split=cfg.split) if label is None or r.label == label]
        if not recs:
            continue
        recs, part = exclude_seen(recs, probes, cfg.allow_train_overlap)
        for k in ("n_candidates", "excluded", "n_seen"):
            info[k] += part.get(k, 0)
        statuses.add(part["status"])
        info["in_sample"] = info.get("in_sample") or part["in_sample"]
        out += sample_by_prompt(recs, cfg.limit, random.Random(cfg.seed))
    require(bool(out), f"no {label or ''} records in {', '.join(cfg.datasets or default)}")
    info["n_eval"] = len(out)
    info["status"] = "; ".join(sorted(statuses))
    print(f"evaluation prompts: {info['n_eval']} ({info['excluded']} of {info['n_candidates']} excluded as seen in "
          f"training/calibration; {info['status']})", flush=True)
    return out, info


def sample_by_prompt(recs: list, limit: int | None, rng) -> list:
    """Up to ``limit`` records, one per prompt group (:func:`interp.probes.groups.content_groups`), groups drawn
    with ``rng`` and the record of each drawn with it too; dataset order kept."""
    from interp.probes.groups import content_groups

    groups = content_groups([r.prompt for _, r in recs], [(r.meta or {}).get("pair_id") for _, r in recs])
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(str(g), []).append(i)
    names = sorted(members)
    if limit and len(names) > limit:
        names = rng.sample(names, limit)
    keep = sorted(rng.choice(members[g]) for g in sorted(names))
    return [recs[i] for i in keep]


def eval_groups(recs: list) -> list[str]:
    """Content group of each evaluated ``(dataset, record)``: the unit every rate's interval resamples."""
    from interp.probes.groups import content_groups

    return [str(g) for g in content_groups([r.prompt for _, r in recs],
                                           [(r.meta or {}).get("pair_id") for _, r in recs])]


def generators(recs: list, continuation: str) -> list[str]:
    """Who wrote the forced text of each record: the evaluated model itself (``prefill``), else the generator its
    dataset records (AlpacaEval ``generator``, ShadowAlignment ``model``, JailbreakBench ``target_model``)."""
    if continuation == "prefill":
        return ["the evaluated model (its own continuation after the opener)"] * len(recs)
    out = []
    for name, r in recs:
        meta = r.meta or {}
        out.append(str(meta.get("generator") or meta.get("model") or meta.get("target_model") or f"{name} (unknown)"))
    return out


def plot_path(out_dir: str | Path, name: str) -> Path:
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return Path(out_dir) / f"{name}.png"
