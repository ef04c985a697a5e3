"""interp.stats (scipy.stats underneath) equals the textbook formulas it replaced."""

import math

import numpy as np
import pytest

from interp.stats import mean_ci, wilson


def wilson_reference(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_reference(x: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def test_wilson_equals_formula():
    for n in range(1, 40):
        for k in range(n + 1):
            w = wilson(k, n)
            assert (w["lo"], w["hi"]) == pytest.approx(wilson_reference(k, n), abs=1e-12)
    assert wilson(0, 0)["rate"] is None


@pytest.mark.parametrize("n", [2, 7, 50, 400])
def test_bootstrap_equals_resampling_by_hand(n):
    x = np.random.default_rng(n).normal(size=n)
    ci = mean_ci(x, n_boot=1000, seed=3)
    assert (ci["lo"], ci["hi"]) == pytest.approx(bootstrap_reference(x, 1000, 3), abs=1e-12)
    assert ci["mean"] == pytest.approx(x.mean()) and ci["n"] == n


def test_bootstrap_edge_cases():
    assert mean_ci([])["n"] == 0 and math.isnan(mean_ci([])["mean"])
    one = mean_ci([3.0, float("nan")])
    assert one["mean"] == 3.0 and one["n"] == 1 and math.isnan(one["lo"])
    const = mean_ci([2.0, 2.0, 2.0])
    assert const["lo"] == const["hi"] == 2.0
