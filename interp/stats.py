"""Confidence intervals shared by every report, resampled by prompt group.

Rows of one prompt group (a prompt, its twin, its near duplicates, every answer and opener of them) are not
independent, so every interval here treats the *group* as the unit. There is one resampling scheme,
:func:`bootstrap_weights` (draw groups with replacement; a row weighs its group's count), used by

* :func:`grouped_mean_ci`: the mean of per-row values with a percentile CI (causal effects, leak windows);
* :func:`grouped_rate`: a rate ``k/n`` with a Wilson interval at the *effective* sample size ``n / deff``, where
  the design effect ``deff`` is the ratio of the grouped-bootstrap variance of the rate (times ``G/(G-1)``, the
  bootstrap's bias over ``G`` groups) to the binomial one,
  bounded to ``[1, m_w]`` (``m_w = sum(m_g^2) / n``, the design effect of groups that always agree). A rate of
  0 or 1 has no bootstrap spread, and one group has no between-group spread, so they get the bound ``m_w``; rows that are all their own group get exactly
  the classical Wilson interval (:func:`wilson`);
* AUROC and its paired differences (:mod:`interp.probes.metrics`), vectorised over the same weights.
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054


def _z(level: float) -> float:
    from scipy.stats import norm

    return Z95 if level == 0.95 else float(norm.ppf(0.5 + level / 2))


def _wilson_bounds(p: float, n: float, z: float) -> tuple[float, float]:
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(p * (1 - p) / n + z * z / (4 * n * n), 0.0)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def wilson(k: int, n: int, level: float = 0.95) -> dict:
    """Rate ``k/n`` with its Wilson score interval (rows independent); ``n = 0`` gives nulls."""
    if n == 0:
        return {"k": 0, "n": 0, "rate": None, "lo": None, "hi": None}
    lo, hi = _wilson_bounds(k / n, n, _z(level))
    return {"k": int(k), "n": int(n), "rate": k / n, "lo": lo, "hi": hi}


def group_codes(groups) -> tuple[np.ndarray, int]:
    """Integer code per row (``0 .. n_groups-1``) and the number of groups."""
    g = np.asarray(groups).reshape(-1)
    if g.size == 0:
        return np.zeros(0, np.int64), 0
    codes = np.unique(g.astype(str), return_inverse=True)[1].reshape(-1)
    return codes, int(codes.max()) + 1


def any_in_group(hits, groups) -> np.ndarray:
    """Per group (in :func:`group_codes` order): whether any of its rows is a hit."""
    codes, n_groups = group_codes(groups)
    return np.bincount(codes, weights=np.asarray(hits, bool).reshape(-1), minlength=n_groups) > 0


def bootstrap_weights(groups, n_boot: int, seed: int = 0) -> np.ndarray:
    """``[B, M]`` row weights for resampling groups with replacement (a row weighs its group's count): the one
    resampling scheme of every interval the toolkit reports."""
    codes, n_groups = group_codes(groups)
    if n_groups == 0:
        return np.zeros((n_boot, 0))
    counts = np.random.default_rng(seed).multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot)
    return counts[:, codes].astype(np.float64)


def _singletons(n: int) -> np.ndarray:
    return np.arange(n)


def grouped_mean_ci(values, groups=None, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Mean of the finite ``values`` with a percentile CI from resampling ``groups`` (default: each value its own
    group); NaN bounds with fewer than two groups."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    g = _singletons(len(x)) if groups is None else np.asarray(groups).reshape(-1)
    if len(g) != len(x):
        raise ValueError(f"{len(x)} values but {len(g)} groups")
    keep = np.isfinite(x)
    x, g = x[keep], g[keep]
    codes, n_groups = group_codes(g)
    out = {"mean": float(x.mean()) if x.size else float("nan"), "lo": float("nan"), "hi": float("nan"),
           "n": int(x.size), "n_groups": n_groups}
    if n_groups < 2:
        return out
    w = bootstrap_weights(g, n_boot, seed)
    means = (w @ x) / w.sum(1)
    alpha = 1 - level
    out["lo"], out["hi"] = (float(v) for v in np.quantile(means, [alpha / 2, 1 - alpha / 2]))
    return out


def mean_ci(values, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """:func:`grouped_mean_ci` with every value its own group (values already one per prompt or pair)."""
    return grouped_mean_ci(values, None, n_boot=n_boot, level=level, seed=seed)


def grouped_rate(hits, groups=None, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> dict:
    """Rate of ``hits`` (bool per row) with a Wilson interval at the effective sample size of the groups.

    Returns ``k, n, n_groups, rate, lo, hi`` and ``deff`` (see the module doc); ``n = 0`` gives nulls."""
    h = np.asarray(hits, dtype=bool).reshape(-1)
    g = _singletons(len(h)) if groups is None else np.asarray(groups).reshape(-1)
    if len(g) != len(h):
        raise ValueError(f"{len(h)} rows but {len(g)} groups")
    n, k = int(len(h)), int(h.sum())
    if n == 0:
        return {"k": 0, "n": 0, "n_groups": 0, "rate": None, "lo": None, "hi": None, "deff": None}
    codes, n_groups = group_codes(g)
    sizes = np.bincount(codes, minlength=n_groups).astype(np.float64)
    bound = float((sizes ** 2).sum() / n)  # the design effect when every group's rows agree
    p = k / n
    if bound <= 1.0:
        deff = 1.0
    elif 0 < k < n and n_groups > 1:
        w = bootstrap_weights(g, n_boot, seed)
        var = float(np.var((w @ h) / w.sum(1))) * n_groups / (n_groups - 1)  # the bootstrap's (G-1)/G bias
        deff = min(max(var / (p * (1 - p) / n), 1.0), bound)
    else:
        deff = bound
    lo, hi = _wilson_bounds(p, n / deff, _z(level))
    return {"k": k, "n": n, "n_groups": n_groups, "rate": p, "lo": lo, "hi": hi, "deff": deff}
