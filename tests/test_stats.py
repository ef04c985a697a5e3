"""interp.stats: one grouped resampling scheme for every interval; Wilson where rows are independent."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from interp.stats import bootstrap_weights, grouped_mean_ci, grouped_rate, mean_ci, wilson


def test_wilson_equals_scipy():
    for n in range(1, 40):
        for k in range(n + 1):
            w = wilson(k, n)
            ci = sps.binomtest(k, n).proportion_ci(method="wilson")
            assert (w["lo"], w["hi"]) == pytest.approx((max(0, ci.low), min(1, ci.high)), abs=1e-12)
    assert wilson(0, 0)["rate"] is None


def test_bootstrap_weights_resample_whole_groups():
    g = np.array(["a", "a", "b", "c", "c", "c"])
    w = bootstrap_weights(g, 200, seed=1)
    assert w.shape == (200, 6)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 5]).all()  # rows of one group share a weight
    assert (w[:, [0, 2, 3]].sum(1) == 3).all()  # three groups drawn per replicate


def test_grouped_mean_ci_counts_groups_not_rows():
    """Copying every value into its own group again narrows a per-row bootstrap; grouped, nothing changes."""
    x = np.random.default_rng(0).normal(size=30)
    base = grouped_mean_ci(x, np.arange(30), n_boot=4000, seed=2)
    twice = np.repeat(x, 4)
    grouped = grouped_mean_ci(twice, np.repeat(np.arange(30), 4), n_boot=4000, seed=2)
    per_row = grouped_mean_ci(twice, None, n_boot=4000, seed=2)
    assert grouped["mean"] == pytest.approx(base["mean"]) and grouped["n_groups"] == 30
    assert (grouped["hi"] - grouped["lo"]) == pytest.approx(base["hi"] - base["lo"], rel=0.08)
    assert (per_row["hi"] - per_row["lo"]) < 0.7 * (base["hi"] - base["lo"])  # the wrong, per-row answer


def test_mean_ci_edge_cases():
    assert mean_ci([])["n"] == 0 and math.isnan(mean_ci([])["mean"])
    one = mean_ci([3.0, float("nan")])
    assert one["mean"] == 3.0 and one["n"] == 1 and math.isnan(one["lo"])
    const = mean_ci([2.0, 2.0, 2.0])
    assert const["lo"] == const["hi"] == 2.0
    assert math.isnan(grouped_mean_ci([1.0, 2.0], ["a", "a"])["lo"])  # one group: no interval


def test_grouped_rate_is_wilson_on_independent_rows():
    hits = np.array([1, 0, 0, 1, 0, 0, 0, 1, 0, 0], bool)
    r = grouped_rate(hits)
    w = wilson(3, 10)
    assert (r["lo"], r["hi"], r["deff"]) == pytest.approx((w["lo"], w["hi"], 1.0))


def test_grouped_rate_widens_for_groups_that_agree():
    """Six rows per prompt that always agree carry one prompt's information: Wilson on the groups, not the rows."""
    g = np.repeat(np.arange(12), 6)
    hits = np.repeat(np.arange(12) < 3, 6)
    r = grouped_rate(hits, g, n_boot=4000)
    on_groups = wilson(3, 12)
    assert r["deff"] == pytest.approx(6.0, rel=0.05) and r["rate"] == pytest.approx(0.25)
    assert (r["lo"], r["hi"]) == pytest.approx((on_groups["lo"], on_groups["hi"]), rel=0.05)
    per_row = wilson(18, 72)
    assert r["hi"] - r["lo"] > 1.8 * (per_row["hi"] - per_row["lo"])
    zero = grouped_rate(np.zeros(72, bool), g)  # no spread to bootstrap: the bound (groups that agree)
    assert zero["deff"] == pytest.approx(6.0) and zero["hi"] == pytest.approx(wilson(0, 12)["hi"])


def test_grouped_rate_independent_rows_inside_groups_stay_near_wilson():
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(100), 4)
    hits = rng.random(400) < 0.3
    r = grouped_rate(hits, g, n_boot=4000)
    assert 1.0 <= r["deff"] < 1.5
    assert grouped_rate([], [])["rate"] is None
    one = grouped_rate([True, False, False], ["g", "g", "g"])  # one group: its rows count as one observation
    assert one["deff"] == 3.0 and one["n_groups"] == 1 and one["hi"] > wilson(1, 3)["hi"]


def test_a_threshold_near_one_is_written_with_the_digits_that_tell_it_from_one():
    from interp.formatting import probability

    assert probability(0.9999951124191284) == "0.999995" and probability(0.99939018) == "0.99939"
    assert probability(1.0) == "1" and probability(0.5) == "0.5"
    # a threshold just below 1 never reads as 1 (the twelve-opener run's sat two float32 steps below it)
    assert probability(0.99999988) == "0.9999999" and probability(1 - 2.0**-52) == "0.9999999999999998"
