"""What a study run produced: its resolved config, stage timings, where each stage wrote, and the targets with
their verdicts (``results.json`` beside the report)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from interp import UserError
from interp.config import to_dict
from interp.results import Result
from interp.study.targets import targets
from interp.study.verdicts import verdict_lines

__all__ = ["StudyResult", "read_json", "run_folder"]


def read_json(path: Path) -> dict | None:
    """A stage's JSON output, or None when the stage wrote none (skipped evaluations)."""
    return json.loads(path.read_text()) if path.exists() else None


def run_folder(run: str | Path) -> Path:
    """The model folder of a study run (the one holding results.json), given it or the ``--out`` folder."""
    run = Path(run)
    found = sorted(run.glob("results.json")) or sorted(run.glob("*/results.json"))
    if not found:
        raise UserError(f"{run}: no results.json; give an `anydepth demo --out` folder of a finished run")
    return found[0].parent


@dataclass
class StudyResult(Result):
    """Stage folders are relative to ``root`` (the run folder), so a run can be moved."""

    kind = "study"
    config: dict[str, Any]
    timings: dict[str, dict]
    best_layer: int | None
    store: str
    probes: str
    sweep: str
    evaluations: dict[str, str] = field(default_factory=dict)
    targets: dict[str, Any] = field(default_factory=dict)
    loso: str = ""  # the readout-LOSO stage's folder ("" when the run did not make one)
    root: Path | None = field(default=None, repr=False)

    @classmethod
    def collect(cls, root: Path, cfg, *, store: Path, sweep_dir: Path, probes_dir: Path,
                eval_dirs: dict[str, Path], timings: dict[str, dict], loso_dir: Path | None = None) -> StudyResult:
        """Read the stages' outputs under ``root`` and compute the targets (:meth:`refreshed`)."""
        sweep = read_json(sweep_dir / "sweep.json")

        def rel(path: Path) -> str:
            return os.path.relpath(path, root)

        return cls(config=to_dict(cfg), timings=timings, best_layer=sweep and sweep["best_layer"], store=rel(store),
                   probes=rel(probes_dir), sweep=rel(sweep_dir), evaluations={k: rel(v) for k, v in eval_dirs.items()},
                   loso=rel(loso_dir) if loso_dir else "", root=Path(root)).refreshed()

    def refreshed(self) -> StudyResult:
        """This result with its targets recomputed from its stage folders by this version's rules (no stage
        runs)."""
        sweep = read_json(self.path(self.sweep) / "sweep.json")
        probes = read_json(self.path(self.probes) / "probeset.json")
        loso = read_json(self.path(self.loso) / "loso.json") if self.loso else None
        return replace(self, targets=targets(sweep, probes, self.config.get("target_fpr"), loso))

    @classmethod
    def load(cls, path: str | Path) -> StudyResult:
        """``results.json`` of a run (or its folder)."""
        path = Path(path)
        path = path / "results.json" if path.is_dir() else path
        result = cls.from_json(json.loads(path.read_text()))
        result.root = path.parent
        return result

    def path(self, relative: str) -> Path:
        return (self.root or Path(".")) / relative

    def load_sweep(self):
        from interp.probes.sweep import SweepResult

        return SweepResult.load(self.path(self.sweep) / "sweep.json")

    def load_probes(self):
        from interp.probes.probeset import ProbeSet

        return ProbeSet.load(self.path(self.probes))

    def load_evaluation(self, mode: str) -> dict:
        """The JSON an evaluation wrote (``deep_prefill.json``, ``over_refusal.json``, ``cost.json``)."""
        return json.loads((self.path(self.evaluations[mode]) / f"{mode.replace('-', '_')}.json").read_text())

    def numbers(self) -> dict[str, Any]:
        """Everything but the timings: what two runs of the same config must agree on."""
        out = self.to_json()
        out.pop("timings")
        return out

    def summary(self) -> str:
        """The targets' verdicts, one line each (what the CLI prints after a run)."""
        total = sum(t["seconds"] for t in self.timings.values())
        return "\n".join([f"best layer {self.best_layer}", *verdict_lines(self.targets),
                          f"stages took {total:.0f} s this run"])
