"""Ranking metrics (AUROC, TPR at fixed FPR, accuracy), all accepting per-row weights so that bootstrap
replicates (prompt-group resampling = integer weights per row, :func:`interp.stats.bootstrap_weights`) run
vectorised: ``weights [B, M]`` gives ``[B]``."""

from __future__ import annotations

import numpy as np

from interp.stats import bootstrap_weights


def _curve(scores: np.ndarray, y: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (weighted) positives and negatives at each distinct threshold, descending: ``[B, T]``."""
    order = np.argsort(-scores, kind="stable")
    s, yy, w = scores[order], y[order], weights[:, order]
    ends = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each tie block
    tp = np.cumsum(w * yy, axis=1)[:, ends]
    fp = np.cumsum(w * (1 - yy), axis=1)[:, ends]
    return tp, fp


def _weights(n: int, weights: np.ndarray | None) -> tuple[np.ndarray, bool]:
    if weights is None:
        return np.ones((1, n)), True
    w = np.asarray(weights, dtype=np.float64)
    return (w[None], True) if w.ndim == 1 else (w, False)


def auroc(scores: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray | float:
    """Area under the ROC curve (ties count one half); NaN when a class has zero weight."""
    scores, y = np.asarray(scores, np.float64), np.asarray(y, np.float64)
    w, single = _weights(len(y), weights)
    tp, fp = _curve(scores, y, w)
    P, N = tp[:, -1], fp[:, -1]
    tp0 = np.concatenate([np.zeros((len(w), 1)), tp], 1)
    fp0 = np.concatenate([np.zeros((len(w), 1)), fp], 1)
    area = (np.diff(fp0, axis=1) * (tp0[:, 1:] + tp0[:, :-1]) / 2).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where((P > 0) & (N > 0), area / (P * N), np.nan)
    return float(out[0]) if single else out


def auroc_within(scores: np.ndarray, y: np.ndarray, blocks: np.ndarray, weights: np.ndarray | None = None
                 ) -> np.ndarray | float:
    """AUROC over the (positive, negative) pairs that share a block only: ``sum_b U_b / sum_b P_b N_b`` with
    ``U_b`` the concordant (weighted) pairs of block b. With blocks = CV folds, every pair compared is scored by
    one fold model, so no comparison mixes two models' scales."""
    scores, y, blocks = np.asarray(scores, np.float64), np.asarray(y, np.float64), np.asarray(blocks)
    w, single = _weights(len(y), weights)
    num, den = np.zeros(len(w)), np.zeros(len(w))
    for b in np.unique(blocks):
        m = blocks == b
        wb = w[:, m]
        P, N = (wb * y[m]).sum(1), (wb * (1 - y[m])).sum(1)
        if not ((P > 0) & (N > 0)).any():
            continue
        with np.errstate(invalid="ignore"):
            a = auroc(scores[m], y[m], wb)
        a = np.atleast_1d(np.asarray(a, np.float64))
        ok = np.isfinite(a)
        num += np.where(ok, a * P * N, 0.0)
        den += np.where(ok, P * N, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0, num / den, np.nan)
    return float(out[0]) if single else out


def tpr_at_fpr(scores: np.ndarray, y: np.ndarray, fpr: float, weights: np.ndarray | None = None
               ) -> np.ndarray | float:
    """Highest TPR over thresholds whose FPR is at most ``fpr`` (flag = score >= threshold)."""
    scores, y = np.asarray(scores, np.float64), np.asarray(y, np.float64)
    w, single = _weights(len(y), weights)
    tp, fp = _curve(scores, y, w)
    P, N = tp[:, -1:], fp[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        rate_fp, rate_tp = fp / N, tp / P
        ok = rate_fp <= fpr + 1e-12
        out = np.where(ok, rate_tp, 0.0).max(1)
        out = np.where((P[:, 0] > 0) & (N[:, 0] > 0), out, np.nan)
    return float(out[0]) if single else out


def accuracy(probs: np.ndarray, y: np.ndarray, threshold: float = 0.5, weights: np.ndarray | None = None
             ) -> np.ndarray | float:
    """Fraction correct with flag = prob >= threshold (the guard's convention)."""
    y = np.asarray(y)
    w, single = _weights(len(y), weights)
    correct = ((np.asarray(probs) >= threshold) == (y == 1)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (w * correct).sum(1) / w.sum(1)
    return float(out[0]) if single else out


def summarize(probs: np.ndarray, y: np.ndarray, groups: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
              threshold: float = 0.5, fprs: tuple[float, ...] = (0.01, 0.05), alpha: float = 0.05,
              chunk: int = 250) -> dict:
    """Point estimates with bootstrap (1 - alpha) CIs resampled by prompt.

    Returns ``{metric: {"value", "lo", "hi"}, "n", "n_pos", "n_prompts"}`` for AUROC, accuracy and TPR@FPR.
    """
    probs, y = np.asarray(probs, np.float64), np.asarray(y)
    fns = {"auroc": lambda w: auroc(probs, y, w), "acc": lambda w: accuracy(probs, y, threshold, w)}
    for f in fprs:
        fns[f"tpr@{f:g}fpr"] = (lambda w, f=f: tpr_at_fpr(probs, y, f, w))
    out: dict = {"n": int(len(y)), "n_pos": int((y == 1).sum()), "n_prompts": int(len(np.unique(groups)))}
    boots = {k: [] for k in fns}
    for start in range(0, n_boot, chunk):
        w = bootstrap_weights(groups, min(chunk, n_boot - start), seed + start)
        for k, fn in fns.items():
            boots[k].append(fn(w))
    for k, fn in fns.items():
        value = fn(None)
        reps = np.concatenate(boots[k]) if n_boot else np.array([np.nan])
        reps = reps[np.isfinite(reps)]
        lo, hi = (np.quantile(reps, [alpha / 2, 1 - alpha / 2]) if len(reps) else (np.nan, np.nan))
        out[k] = {"value": value, "lo": float(lo), "hi": float(hi)}
    return out


def paired_auroc_diff(a: np.ndarray, b: np.ndarray, y: np.ndarray, groups: np.ndarray, *, n_boot: int = 1000,
                      seed: int = 0, alpha: float = 0.05) -> dict:
    """AUROC(a) − AUROC(b) on the same rows, with a bootstrap CI that resamples prompts for both at once.

    ``beats`` is True when the whole interval lies above zero (the claim "a beats b" is then supported)."""
    a, b, y = np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(y)
    value = auroc(a, y) - auroc(b, y)
    w = bootstrap_weights(groups, n_boot, seed) if n_boot else None
    reps = (auroc(a, y, w) - auroc(b, y, w)) if w is not None else np.array([np.nan])
    reps = reps[np.isfinite(reps)]
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2]) if len(reps) else (np.nan, np.nan)
    return {"value": float(value), "lo": float(lo), "hi": float(hi), "beats": bool(lo > 0)}
