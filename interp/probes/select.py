"""The one rule that picks the probe layer and sets its threshold; ``anydepth sweep`` and ``anydepth train`` both
call it, so on the same scores they cannot disagree.

Layer: the highest grouped-CV AUROC (the first of ties), unless the user fixes one. Threshold: per answer, the
event the guard acts on. Each benign answer is scored by the checks its schedule makes at stored depths (the
maximum, or the k-th largest for a k-of-n rule: :func:`interp.probes.protocol.answer_scores`), and the threshold
is the target-FPR quantile of those answer scores (:func:`interp.probes.protocol.per_answer_threshold`). Without a
guard schedule (the sweep), every stored depth counts as a check (:data:`EVERY_STORED_DEPTH`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from interp import UserError
from interp.probes.protocol import Schedule, answer_scores, per_answer_threshold

# a check at every depth: restricted to the stored depths an answer reaches, "max over the stored depths"
EVERY_STORED_DEPTH = Schedule(stride=1, check_at_start=True, final_check=False)


def choose_layer(layers: Sequence[int], aurocs: Sequence[float], fixed: int | None = None) -> int:
    """``fixed`` if given, else the layer with the highest AUROC (first of ties; NaN layers never win)."""
    if fixed is not None:
        return int(fixed)
    a = np.asarray(aurocs, np.float64)
    if not np.isfinite(a).any():
        raise UserError("no layer has a finite AUROC (every fold held one class?); add prompts of both labels")
    return int(list(layers)[int(np.nanargmax(a))])


def control_rows(y: np.ndarray, sources: np.ndarray, control_sources: Sequence[str] | None) -> np.ndarray:
    """Benign rows, restricted to ``control_sources`` when given (the answers a threshold is calibrated on)."""
    control = np.asarray(y) == 0
    if control_sources:
        control &= np.isin(np.asarray(sources).astype(str), list(control_sources))
    return control


def answer_threshold(scores: np.ndarray, depths: Sequence[int], n_tokens: Sequence[int], target_fpr: float,
                     schedule: Schedule = EVERY_STORED_DEPTH) -> dict:
    """Per-answer threshold on benign answers' per-depth ``scores [N, D]`` (NaN = not stored / invalid).

    Returns :func:`~interp.probes.protocol.per_answer_threshold`'s fields plus ``schedule_coverage`` and
    ``answer_scores`` (the per-answer scores, for rates at the threshold)."""
    ans, coverage = answer_scores(scores, depths, n_tokens, schedule)
    if not np.isfinite(ans).any():
        raise UserError(f"none of the checks the guard schedule makes ({schedule.to_dict()}) falls on a stored depth "
                        f"({[int(d) for d in depths]}); pass a --stride / --early-checks the store holds")
    return per_answer_threshold(ans, target_fpr) | {"schedule_coverage": coverage, "answer_scores": ans}
