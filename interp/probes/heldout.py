"""The probe set's numbers on its test prompts as a typed result (``ProbeSet.held_out``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from interp.formatting import rate
from interp.probes.tables import heldout_table
from interp.results import Result

__all__ = ["HeldOutReport"]


@dataclass
class HeldOutReport(Result):
    """Numbers on the held-out test prompts (they set neither the probe nor the threshold): AUROC per check of the
    probe and each baseline (pooled and per depth, CIs over prompt groups), paired probe − baseline differences,
    and the per-answer TPR / FPR at the frozen threshold on exactly the guard's checks."""

    kind = "held_out"
    n_prompts: int
    n_harmful: int
    n_benign: int
    per_check: dict[str, dict | None]
    per_depth: dict[str, list[dict]]
    per_answer: dict[str, Any]
    probe_minus_baseline_auroc: dict[str, dict] = field(default_factory=dict)
    probe_minus_ngram_auroc: dict | None = None
    notes: list[str] = field(default_factory=list)

    def auroc(self, method: str = "probe") -> float | None:
        summ = self.per_check.get(method)
        return None if not summ else summ["auroc"]["value"]

    def beats(self, method: str) -> bool | None:
        """Whether the probe's AUROC beats ``method``'s (the CI of the paired difference excludes 0)."""
        d = self.probe_minus_baseline_auroc.get(method)
        return None if d is None else bool(d["beats"])

    @property
    def tpr(self) -> dict:
        """Per-answer detection on held-out harmful answers (``rate``, ``lo``, ``hi``, ``k``, ``n``)."""
        return self.per_answer["tpr"]

    @property
    def fpr(self) -> dict:
        """Per-answer false alarms on held-out benign answers of the calibrated kinds."""
        return self.per_answer["fpr"]

    @property
    def tpr_by_kind(self) -> dict[str, dict]:
        """The same detection split by the harmful answers' kind: ``prefill`` (the model's own deep prefills),
        ``dataset`` (third-party text), ``insertion``."""
        return self.per_answer.get("tpr_by_kind") or {}

    def summary(self) -> str:
        kinds = "".join(f"; {k} {rate(v)}" for k, v in self.tpr_by_kind.items())
        return "\n".join([f"held-out test ({self.n_prompts} prompt groups), AUROC per check:", *heldout_table(
            self.to_json()), f"held-out test per answer at the threshold: TPR {rate(self.tpr)} (by kind{kinds or ': –'}), "
            f"FPR {rate(self.fpr)}" + (f" (prompts with a false alarm {rate(self.per_answer['fpr_prompts'])})"
                                       if self.per_answer.get("fpr_prompts") else "")])
