"""Confidence intervals shared by every report: Wilson intervals for rates and percentile-bootstrap intervals for
means, both through ``scipy.stats`` (the hand-written versions they replace gave the same numbers to 1e-12, and
the same bootstrap draws for a given seed). Grouped (cluster) bootstraps of AUROC stay in
:mod:`interp.probes.metrics`: scipy has no resampling by group.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats


def wilson(k: int, n: int, level: float = 0.95) -> dict:
    """Rate ``k/n`` with its Wilson score interval; ``n = 0`` gives nulls."""
    if n == 0:
        return {"k": 0, "n": 0, "rate": None, "lo": None, "hi": None}
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return {"k": int(k), "n": int(n), "rate": k / n, "lo": max(0.0, float(ci.low)), "hi": min(1.0, float(ci.high))}


def mean_ci(values, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Mean of the finite values with a percentile-bootstrap CI (one value per prompt or pair); NaN bounds for
    fewer than two values."""
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    if x.size == 1:
        return {"mean": float(x[0]), "lo": float("nan"), "hi": float("nan"), "n": 1}
    with warnings.catch_warnings():  # constant data: a zero-width interval, which is the right answer
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap((x,), np.mean, n_resamples=n_boot, confidence_level=level, method="percentile",
                              vectorized=True, rng=np.random.default_rng(seed))
    return {"mean": float(x.mean()), "lo": float(res.confidence_interval.low),
            "hi": float(res.confidence_interval.high), "n": int(x.size)}
