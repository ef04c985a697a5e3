"""Recipe levers of the probe fit: source-balanced row weights and the stacked multi-layer probe."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from interp.cli.main import main
from interp.extract.store import ActivationStore
from interp.probes.fit import LinearParams, fit_logreg_torch, fit_sklearn, row_weights
from interp.probes.probeset import ProbeSet
from interp.probes.stack import split_stacked, stack_layers
from interp.probes.synthetic import write_layered_store


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return write_layered_store(tmp_path_factory.mktemp("store") / "s.h5")


def test_row_weights_give_each_source_of_a_class_the_same_total():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    src = np.array(["a", "a", "a", "b", "c", "c", "c", "c", "c", "d"])
    w = row_weights(y, "balanced", src)
    assert np.isclose(w[y == 1].sum(), 5) and np.isclose(w[y == 0].sum(), 5)  # n / 2 per class, as sklearn
    assert np.isclose(w[src == "a"].sum(), w[src == "b"].sum())  # 3 rows and 1 row weigh the same
    assert np.isclose(w[src == "c"].sum(), w[src == "d"].sum())
    assert np.allclose(row_weights(y, "balanced"), np.where(y == 1, 10 / 8, 10 / 12))
    unbalanced = row_weights(y, None, src)
    assert np.isclose(unbalanced[y == 1].sum(), 4) and np.isclose(unbalanced[y == 0].sum(), 6)


def test_row_weights_boost_scales_rows_within_their_class_and_keeps_class_totals():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    src = np.array(["a", "a", "a", "b", "c", "c", "c", "c", "c", "d"])
    boost = np.array([1, 1, 1, 1, 3, 1, 1, 1, 1, 3.0])
    for sources in (None, src):
        w = row_weights(y, "balanced", sources, boost)
        assert np.isclose(w[y == 1].sum(), 5) and np.isclose(w[y == 0].sum(), 5)  # class totals unchanged
        assert np.allclose(w[y == 1], row_weights(y, "balanced", sources)[y == 1])  # unboosted class untouched
        assert np.isclose(w[4] / w[5], 3)  # a boosted row weighs three rows of its source
    assert np.allclose(row_weights(y, "balanced", None, np.ones(10)), row_weights(y, "balanced"))
    balanced = row_weights(y, "balanced", src, boost)
    # with source balance a source's share follows its rows' mean boost: c (3,1,1,1,1) 1.4, d (3) 3
    assert np.isclose(balanced[src == "d"].sum() / balanced[src == "c"].sum(), 3 / 1.4)
    assert np.isclose(balanced[y == 0].sum(), 5)


def test_a_boosted_source_outweighs_an_unboosted_one_under_source_balance():
    """Balance and hard negatives compose: a benign source whose every row is boosted 10 weighs 10 times an
    unboosted one, whatever their row counts (before, the balance undid the boost of a whole source)."""
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0])
    src = np.array(["h", "h", "hard", "hard", "plain", "plain", "plain", "plain"])
    boost = np.where(src == "hard", 10.0, 1.0)
    w = row_weights(y, "balanced", src, boost)
    assert np.isclose(w[src == "hard"].sum(), 10 * w[src == "plain"].sum())
    assert np.isclose(w[y == 0].sum(), 4) and np.allclose(w[y == 1], 2)


def test_hard_negative_boost_weights_benign_forced_opener_answers_and_refusals_only():
    from interp import UserError
    from interp.probes.oof import ProbeConfig, hard_negative_boost

    src = np.array(["a:prefill", "a:prefill", "a:own", "alpaca", "b:refusal", "c:prefill"])
    y = np.array([0, 1, 0, 0, 0, 0])
    assert hard_negative_boost(y, src, ProbeConfig()) is None  # weight 1: the plain fit
    got = hard_negative_boost(y, src, ProbeConfig(hard_negative_weight=4.0))
    assert got.tolist() == [4, 1, 1, 1, 4, 4]  # a harmful forced-opener row is not a hard negative
    for bad, match in ((ProbeConfig(hard_negative_weight=0.0), "positive"),
                       (ProbeConfig(hard_negative_weight=2.0, method="diffmeans"), "diffmeans")):
        with pytest.raises(UserError, match=match):
            hard_negative_boost(y, src, bad)


def test_boosted_torch_fit_matches_sklearn_sample_weights():
    """Hard-negative boosts reach scikit-learn's optimum with the same sample weights, on both solver paths."""
    from interp.probes.oof import ProbeConfig, fit_probes

    rng = np.random.default_rng(5)
    n, d = 500, 16
    y = rng.integers(0, 2, n)
    src = np.where(rng.random(n) < 0.3, "x:prefill", "x:own")
    X = (rng.normal(size=(n, d)) + np.outer(y * 0.8, rng.normal(size=d))
         + np.outer(src == "x:prefill", rng.normal(size=d))).astype(np.float32)
    cfg = ProbeConfig(C=0.5, hard_negative_weight=5.0, max_iter=100000)
    boost = np.where((src == "x:prefill") & (y == 0), 5.0, 1.0)
    ref = LogisticRegression(C=0.5, tol=1e-12, max_iter=100000).fit(
        X.astype(np.float64), y, sample_weight=row_weights(y, "balanced", None, boost))
    w_ref = ref.coef_[0]
    torch_fit = fit_probes(X, y, np.ones((1, n), bool), cfg, src)[0]
    sk_fit = fit_probes(X, y, np.ones((1, n), bool), ProbeConfig(**{**cfg.__dict__, "solver": "sklearn"}), src)[0]
    plain = fit_probes(X, y, np.ones((1, n), bool), ProbeConfig(C=0.5), src)[0]
    assert np.abs(torch_fit.folded()[0] - w_ref).max() < 1e-4 * (1 + np.abs(w_ref).max())
    assert np.abs(sk_fit.folded()[0] - w_ref).max() < 1e-3 * (1 + np.abs(w_ref).max())
    assert np.abs(torch_fit.folded()[0] - plain.folded()[0]).max() > 1e-2  # the boost changes the fit


@pytest.mark.parametrize("standardize", [False, True])
def test_source_balanced_torch_fit_matches_sklearn_sample_weights(standardize):
    """The batched solver with source weights reaches scikit-learn's optimum with the same sample weights."""
    rng = np.random.default_rng(3)
    n, d = 600, 24
    src = rng.choice(["big", "small", "tiny"], size=n, p=[0.8, 0.15, 0.05])
    y = rng.integers(0, 2, n)
    X = (rng.normal(size=(n, d)) + np.outer(y * 0.8, rng.normal(size=d))
         + np.outer(src == "big", rng.normal(size=d))).astype(np.float32)
    got = fit_logreg_torch(X, y, C=0.5, standardize=standardize, sources=src, tol=1e-9)[0, 0]
    plain = fit_logreg_torch(X, y, C=0.5, standardize=standardize, tol=1e-9)[0, 0]
    # the reference in float64 (fit_sklearn standardises into float32, whose optimum is looser than this bound)
    mean, std = X.mean(0, dtype=np.float64), X.std(0, dtype=np.float64)
    Xs = (X - mean) / std if standardize else X.astype(np.float64)
    ref = LogisticRegression(C=0.5, tol=1e-12, max_iter=100000).fit(Xs, y, sample_weight=row_weights(y, "balanced", src))
    w_ref, b_ref = ref.coef_[0] / (std if standardize else 1), ref.intercept_[0]
    b_ref = b_ref - (mean * w_ref).sum() if standardize else b_ref
    (w, b), (w_plain, _) = got.folded(), plain.folded()
    assert np.abs(w - w_ref).max() < 1e-5 * (1 + np.abs(w_ref).max()) and abs(b - b_ref) < 1e-5 * (1 + abs(b_ref))
    sk = fit_sklearn(X, y, C=0.5, sources=src, tol=1e-10, max_iter=10000)  # the sklearn path takes the weights too
    assert standardize or np.abs(sk.folded()[0] - w_ref).max() < 1e-4 * (1 + np.abs(w_ref).max())
    assert np.abs(w - w_plain).max() > 1e-2  # the weights change the fit (the test would catch them ignored)


def test_the_parts_of_a_stacked_probe_average_to_its_logit():
    rng = np.random.default_rng(0)
    params = LinearParams(rng.normal(size=12), np.asarray(0.3), rng.normal(size=12), rng.uniform(0.5, 2, 12))
    X = rng.normal(size=(50, 12))
    parts = split_stacked(params, 3)
    mean_logit = np.mean([p.logit(X[:, 4 * i:4 * i + 4]) for i, p in enumerate(parts)], 0)
    assert np.allclose(mean_logit, params.logit(X), rtol=0, atol=1e-10)


def test_train_a_stacked_probe_the_guard_scores_as_one_regression(store_path, tmp_path):
    """The saved parts, scored by ProbeSet.combined_score (the guard's multi-layer readout), give the logit of
    one standardised logistic regression on the training prompts' concatenated layers."""
    from interp.probes.data import load_layer

    out = tmp_path / "p"
    assert main(["train", "--store", str(store_path), "--out", str(out), "--folds", "3", "--n-boot", "0",
                 "--stride", "10", "--combine-layers", "1", "2", "--stack", "true", "--target-fpr", "0.1"]) == 0
    with ActivationStore.open(store_path) as store:
        ps = ProbeSet.load(out, expect_provenance=store.provenance)
        states = {layer: store.read(ps.hook, layer, position="probe") for layer in (1, 2)}
        data = [load_layer(store, ps.hook, layer, "probe", pairs_only=True) for layer in (1, 2)]
    assert ps.layers == [1, 2] and ps.readout == [1, 2] and ps.metrics["readout"]["stacked"]
    train = np.isin(data[0].groups, ps.split["train"]["groups"])
    stacked = stack_layers(data).subset(train)
    X, y, _, _ = stacked.flat()
    ref = fit_logreg_torch(X, y, C=1.0, standardize=True)[0, 0]
    rows, cols = np.nonzero(data[0].valid)
    full = stack_layers(data).features(rows, cols)
    want = 1 / (1 + np.exp(-ref.logit(full)))
    got = np.asarray(ps.combined_score(states), np.float64)[rows, cols]
    assert np.abs(got - want).max() < 1e-5


def test_stack_needs_layers_and_warns_when_wider_than_its_rows(store_path, tmp_path, capsys):
    assert main(["train", "--store", str(store_path), "--out", str(tmp_path / "p"), "--stack", "true"]) == 2
    err = capsys.readouterr().err
    assert "--stack true stacks the layers of --combine-top K or --combine-layers" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "p").exists()
    from interp.probes.stack import warn_if_wide

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_wide(4096 * 3, 900, 1.0)
    assert "12288 features and 900 training rows" in str(caught[0].message) and "C=1.0" in str(caught[0].message)
