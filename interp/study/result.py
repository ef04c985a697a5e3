"""What a study run produced: its resolved config, stage timings, where each stage wrote, and the targets with
their verdicts (``results.json`` beside the report)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interp.config import to_dict
from interp.results import Result
from interp.study.targets import targets

__all__ = ["StudyResult", "read_json"]


def read_json(path: Path) -> dict | None:
    """A stage's JSON output, or None when the stage wrote none (skipped evaluations)."""
    return json.loads(path.read_text()) if path.exists() else None


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
        """Read the stages' outputs under ``root`` and compute the targets."""
        sweep = read_json(sweep_dir / "sweep.json")
        probes = read_json(Path(probes_dir) / "probeset.json")

        def rel(path: Path) -> str:
            return os.path.relpath(path, root)

        return cls(config=to_dict(cfg), timings=timings, best_layer=sweep and sweep["best_layer"], store=rel(store),
                   probes=rel(probes_dir), sweep=rel(sweep_dir), evaluations={k: rel(v) for k, v in eval_dirs.items()},
                   targets=targets(sweep, probes, cfg.target_fpr), loso=rel(loso_dir) if loso_dir else "",
                   root=Path(root))

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
        s = self.targets.get("summary") or {}
        lines = [f"best layer {self.best_layer}"]
        for key, label in (("loso_auroc_min", "LOSO probe AUROC (mean over held-out sources), lowest"),
                           ("tpr_min", "ADA-LP TPR per check on held-out harmful answers, lowest"),
                           ("fpr", "per-answer false alarms on held-out benign answers")):
            t = s.get(key)
            if t:
                where = f" at depth {t['depth']}" if "depth" in t else ""
                lines.append(f"{label}: {t['value']:.3f}{where} (target {t['target']}: "
                             f"{'met' if t['met'] else 'missed'})")
        total = sum(t["seconds"] for t in self.timings.values())
        return "\n".join([*lines, f"stages took {total:.0f} s this run"])
