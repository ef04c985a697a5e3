"""Thresholds at a target false-positive rate on benign controls, and reliability / ECE."""

from __future__ import annotations

import math

import numpy as np

from interp import UserError


def check_threshold(value, where: str = "--threshold", *, optional: bool = False) -> float | None:
    """``value`` as a float when a probe threshold can fire with it, else a one-line :class:`UserError`. Scores
    are float64 probabilities in [0, 1] (a saturated score is exactly 1), so a usable threshold is a finite number
    in [0, 1]; NaN or anything above 1 would turn the guard off silently. ``optional``: ``None`` (an option left
    unset) passes as ``None``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{where} must be a number in [0, 1], got {value!r}")
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise UserError(f"{where} is a probability: it must be in [0, 1] to ever fire, got {value}")
    return float(value)


def sigmoid(z) -> np.ndarray:
    """The probability a threshold applies to: ``1 / (1 + exp(-z))`` of logits ``z``, in float64 (see :func:`fires`)."""
    with np.errstate(over="ignore"):  # exp(-z) overflows to inf for z below about -709: the probability is 0
        return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def fires(scores, threshold: float) -> np.ndarray:
    """The one flag convention, offline and live: ``score >= threshold`` compared in float64 (the guard's scores
    are float64 probabilities: in float32 they saturate to 1 from a logit of about 17, where confident stacked
    probes put many answers, and a threshold could no longer order them; float64 holds them to a logit of about
    37). :func:`interp.guard.aggregate.reaches` is the scalar form. NaN never fires."""
    with np.errstate(invalid="ignore"):
        return np.asarray(scores, np.float64) >= np.float64(threshold)


def threshold_allowing(scores: np.ndarray, k: int) -> float:
    """A threshold at which exactly the scores above the ``(n - k)``-th smallest fire (ties never split): a
    float64 value strictly above that score and at most the next larger distinct score (their midpoint where
    float64 can hold it), or just above the maximum when ``k = 0``. ``-inf`` scores never fire."""
    s = np.sort(np.asarray(scores, np.float64))
    if len(s) == 0:
        raise UserError("no benign control scores to set a threshold on")
    k = int(min(max(k, 0), len(s) - 1))
    base = s[len(s) - k - 1]
    above = s[s > base]
    if base == -np.inf:  # everything that can fire may fire
        return float(np.nextafter(above[0], -np.inf)) if len(above) else 1.0
    floor = np.nextafter(base, np.inf)
    if len(above) == 0:
        return float(floor)
    return float(max((float(base) + float(above[0])) / 2, floor))


def threshold_at_fpr(benign_scores: np.ndarray, target_fpr: float) -> float:
    """Threshold flagging (:func:`fires`) at most ``target_fpr`` of the benign scores: k = floor(target * n) of them
    (:func:`threshold_allowing`)."""
    s = np.asarray(benign_scores, np.float64)
    if len(s) == 0:
        raise UserError("no benign control scores to set a threshold on")
    if not 0 <= target_fpr < 1:
        raise UserError(f"target FPR must be in [0, 1), got {target_fpr}")
    return threshold_allowing(s, int(np.floor(target_fpr * len(s) + 1e-9)))


def threshold_fpr_bound(n: int, fired: int, level: float = 0.95) -> dict[str, float]:
    """What a threshold set on ``n`` benign answers, ``fired`` of which reach it, promises for the next benign
    answer. For exchangeable answers with continuous scores the false-alarm probability of a threshold just above
    the ``(fired + 1)``-th highest score is Beta(fired + 1, n - fired) distributed (order statistics): its mean
    ``(fired + 1) / (n + 1)`` and its ``level`` quantile. A threshold higher up, toward the next score (as
    :func:`threshold_allowing` places it), fires less, so both bound it from above. Answers of one prompt are
    correlated, so for grouped answers the bound is optimistic."""
    from scipy.stats import beta

    if n < 1 or not 0 <= fired < n:
        raise UserError(f"a threshold bound needs 0 <= fired < n answers, got fired={fired}, n={n}")
    return {"expected": (fired + 1) / (n + 1), "upper": float(beta.ppf(level, fired + 1, n - fired)),
            "level": level}


def rates_at_threshold(scores: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, float]:
    """TPR and FPR of :func:`fires` at ``threshold``."""
    scores, y = np.asarray(scores), np.asarray(y)
    flagged = fires(scores, threshold)
    tpr = float(flagged[y == 1].mean()) if (y == 1).any() else float("nan")
    fpr = float(flagged[y == 0].mean()) if (y == 0).any() else float("nan")
    return {"threshold": float(threshold), "tpr": tpr, "fpr": fpr}


def reliability_curve(probs: np.ndarray, y: np.ndarray, n_bins: int = 10) -> dict[str, list[float]]:
    """Equal-width bins on [0, 1]: mean predicted probability, observed positive rate and count per bin."""
    probs, y = np.asarray(probs, np.float64), np.asarray(y, np.float64)
    idx = np.clip((probs * n_bins).astype(int), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pred = np.bincount(idx, probs, n_bins) / count
        frac_pos = np.bincount(idx, y, n_bins) / count
    return {"edges": np.linspace(0, 1, n_bins + 1).tolist(), "mean_pred": mean_pred.tolist(),
            "frac_pos": frac_pos.tolist(), "count": count.tolist()}


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = 10) -> float:
    """Sum over bins of (bin count / n) * |observed positive rate - mean predicted probability|."""
    rc = reliability_curve(probs, y, n_bins)
    count = np.asarray(rc["count"])
    gap = np.abs(np.nan_to_num(np.asarray(rc["frac_pos"]) - np.asarray(rc["mean_pred"])))
    return float((count * gap).sum() / max(count.sum(), 1))


def fpr_bound_text(cal: dict) -> str:
    """``cal["fpr_new_answers"]`` (and ``fpr_new_prompts``) in words ("" for a calibration record made before
    they existed)."""
    b, p = cal.get("fpr_new_answers"), cal.get("fpr_new_prompts")
    if not b:
        return ""
    text = (f"false alarms to expect on new answers at most {b['expected']:.1%} on average and {b['upper']:.1%} "
            f"with {b['level']:.0%} confidence (answers taken as exchangeable: optimistic, since answers to one "
            "prompt fire together)")
    if p:
        text += (f"; new benign prompts with a false alarm on some answer at most {p['expected']:.1%} on average and "
                 f"{p['upper']:.1%} with {p['level']:.0%} confidence (over {p['n_prompts']} calibration prompts)")
    return text
