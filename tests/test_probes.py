"""Probe trainers, grouped CV, metrics, thresholds and the ProbeSet format, on synthetic activations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from interp import UserError
from interp.probes import ProbeSet
from interp.probes.calibration import expected_calibration_error, rates_at_threshold, threshold_at_fpr
from interp.probes.cv import check_grouping, grouped_folds, source_split, ungrouped_pair_folds
from interp.probes.fit import LinearParams, fit_diff_of_means, fit_logreg_torch, fit_sklearn
from interp.probes.metrics import accuracy, auroc, bootstrap_weights, summarize, tpr_at_fpr
from interp.probes.oof import ProbeConfig, oof_scores
from interp.probes.synthetic import SyntheticSet, SyntheticSpec


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def planted():
    spec = SyntheticSpec(n_prompts=240, n_depths=5, d_model=24, n_layers=2, signal=(0.0, 4.0),
                         margin_noise=0.5, depth_noise=0.1, seed=1)
    return SyntheticSet(spec)


def test_probe_recovers_planted_direction(planted):
    data = planted.layer(1)
    X, y, _, _ = data.flat()
    for params in (fit_sklearn(X, y), fit_logreg_torch(X, y)[0, 0], fit_diff_of_means(X, y)):
        w, _ = params.folded()
        assert _cos(w, planted.directions[1]) > 0.95
    split = grouped_folds(data.y, data.groups, 5, seed=0)
    p = oof_scores(data, split, ProbeConfig())
    ok = np.isfinite(p)
    assert ok.sum() == data.valid.sum()
    assert auroc(p[ok], data.y[np.nonzero(ok)[0]]) > 0.99


def test_shuffled_labels_give_chance_auroc():
    ss = SyntheticSet(SyntheticSpec(n_prompts=400, n_depths=4, d_model=16, n_layers=1, signal=(3.0,),
                                    shuffle_labels=True, seed=2))
    data = ss.layer(0)
    p = oof_scores(data, grouped_folds(data.y, data.groups, 5, seed=0), ProbeConfig())
    rows, cols = np.nonzero(np.isfinite(p))
    assert abs(auroc(p[rows, cols], data.y[rows]) - 0.5) < 0.08


def test_grouped_folds_keep_prompts_together_and_repeat():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 60, 500).astype(str)  # several rows per prompt
    y = (np.unique(groups, return_inverse=True)[1] % 2)
    split = grouped_folds(y, groups, 5, seed=3)
    for f in range(5):
        assert not set(groups[split.test[f]]) & set(groups[split.train[f]])
    assert (split.test.sum(0) == 1).all()  # every row tested exactly once
    assert np.array_equal(split.test, grouped_folds(y, groups, 5, seed=3).test)
    assert not np.array_equal(split.test, grouped_folds(y, groups, 5, seed=4).test)
    bad = ungrouped_pair_folds(len(y), 5, seed=0)
    with pytest.raises(AssertionError):
        check_grouping(bad, groups)


def test_source_split():
    sources = np.array(["a", "b", "c", "a"])
    s = source_split(sources, ["a"], ["b"])
    assert s.train.tolist() == [[True, False, False, True]] and s.test.tolist() == [[False, True, False, False]]
    with pytest.raises(UserError):
        source_split(sources, ["a"], ["zzz"])
    shared = source_split(np.array(["a", "a", "b"]), ["a"], ["b"], groups=np.array(["p1", "p2", "p1"]))
    assert shared.train.tolist() == [[False, True, False]]  # p1 is tested, so it is not trained on
    check_grouping(shared, np.array(["p1", "p2", "p1"]))


def test_ungrouped_cv_leaks_near_duplicate_depths():
    # Labels carry no signal; a prompt's depths are near-duplicates. Splitting depths of one prompt across
    # folds lets the probe memorise prompts: ungrouped CV reports well above chance, grouped CV does not.
    ss = SyntheticSet(SyntheticSpec(n_prompts=120, n_depths=8, d_model=64, n_layers=1, signal=(0.0,),
                                    depth_noise=0.05, invalid_frac=0.0, shuffle_labels=True, seed=5))
    data = ss.layer(0)
    X, y, rows, _ = data.flat()
    cfg = ProbeConfig(C=10.0)
    grouped = oof_scores(data, grouped_folds(data.y, data.groups, 5, seed=0), cfg)
    leaky = ungrouped_pair_folds(len(y), 5, seed=0)
    p_leaky = np.zeros(len(y))
    params = fit_logreg_torch(X, y, leaky.train, C=cfg.C)
    for f in range(5):
        p_leaky[leaky.test[f]] = params[0, f].logit(X[leaky.test[f]])
    a_grouped = auroc(grouped[np.nonzero(data.valid)], y)
    a_leaky = auroc(p_leaky, y)
    assert a_leaky > 0.85 and abs(a_grouped - 0.5) < 0.15 and a_leaky - a_grouped > 0.3


@pytest.mark.parametrize("standardize", [False, True])
def test_torch_solver_matches_sklearn(standardize):
    ss = SyntheticSet(SyntheticSpec(n_prompts=300, n_depths=4, d_model=48, n_layers=2, signal=(0.6, 1.2),
                                    anisotropy=1.5, margin_noise=1.0, seed=7))
    X = np.stack([ss.layer_array(i)[ss.valid] for i in range(2)])  # [L, M, d]: all layers at once
    y = ss.y[np.nonzero(ss.valid)[0]]
    split = ungrouped_pair_folds(len(y), 3, seed=0)
    batched = fit_logreg_torch(X, y, split.train, C=0.5, standardize=standardize)
    assert batched.info["converged"].all()
    for layer in range(2):
        for f in range(3):
            m = split.train[f]
            ref = fit_sklearn(X[layer][m], y[m], C=0.5, standardize=standardize, tol=1e-8, max_iter=5000)
            w_ref, b_ref = ref.folded()
            w, b = batched[layer, f].folded()
            assert _cos(w, w_ref) > 0.999
            te = split.test[f]
            gap = abs(roc_auc_score(y[te], X[layer][te] @ w) - roc_auc_score(y[te], X[layer][te] @ w_ref))
            assert gap < 0.005
            assert abs(b - b_ref) < 0.02 * (1 + abs(b_ref))


def _objective_grad_max(X, y, mask, params, C, standardize):
    """max |gradient| / (C * sum s) of scikit-learn's objective at ``params``, in float64 numpy."""
    Xm, ym = X[mask].astype(np.float64), y[mask]
    s = np.where(ym == 1, len(ym) / (2.0 * ym.sum()), len(ym) / (2.0 * (len(ym) - ym.sum())))
    if standardize:
        Xm = (Xm - params.mean) / params.scale
    r = C * s * (1 / (1 + np.exp(-(Xm @ params.coef + params.intercept))) - ym)
    g = np.r_[params.coef + Xm.T @ r, r.sum()]
    return np.abs(g).max() / (C * s.sum())


def _correlated(seed: int, n: int = 3000, d: int = 40):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    X = (rng.normal(size=(n, d)) * np.exp(rng.uniform(-3, 2, d))) @ q.T + 5.0  # correlated, offset mean
    X[:, :2] *= 30  # outlier dimensions, as in real residual streams
    y = (X @ rng.normal(size=d) / 20 + rng.normal(size=n) > np.median(X @ rng.normal(size=d) / 20)).astype(int)
    return X.astype(np.float32), y


@pytest.mark.parametrize("standardize", [False, True])
def test_torch_solver_reaches_tolerance_on_correlated_features(standardize):
    X, y = _correlated(3)
    masks = ungrouped_pair_folds(len(y), 3, seed=1).train
    tol = 1e-6
    fit = fit_logreg_torch(X, y, masks, C=2.0, standardize=standardize, tol=tol, max_iter=2000)
    assert fit.info["converged"].all()
    for f in range(3):
        # the stopping rule, re-checked independently in float64 (tracked logits must not drift)
        assert _objective_grad_max(X, y, masks[f], fit[0, f], 2.0, standardize) < 3 * tol
        # float64 reference: scikit-learn on float32 data stops at its own noise floor, short of 1e-8
        ref = fit_sklearn(X[masks[f]].astype(np.float64), y[masks[f]], C=2.0, standardize=standardize, tol=1e-8,
                          max_iter=10000)
        assert _cos(fit[0, f].folded()[0], ref.folded()[0]) > 0.9999


@pytest.mark.parametrize("standardize", [False, True])
def test_rows_centred_in_chunks_reach_the_copys_optimum(standardize):
    """Past ``copy_budget`` the solver centres the rows chunk by chunk inside each product instead of holding a
    centred copy (paper-scale layers): the same stopping rule, the same optimum, to float32 rounding; under the
    budget it is the copy, bit for bit the same as before."""
    X, y = _correlated(3)
    X = np.stack([X, X[:, ::-1].copy()])  # two layers
    masks = ungrouped_pair_folds(len(y), 3, seed=2).train
    kw = dict(C=2.0, standardize=standardize, tol=1e-7, max_iter=2000)
    copy = fit_logreg_torch(X, y, masks, **kw)
    chunked = fit_logreg_torch(X, y, masks, copy_budget=0, chunk_rows=333, **kw)
    assert copy.info["converged"].all() and chunked.info["converged"].all()
    for idx in np.ndindex(2, 3):
        (w_a, b_a), (w_b, b_b) = copy[idx].folded(), chunked[idx].folded()
        assert _cos(w_a, w_b) > 0.999999 and abs(b_a - b_b) < 1e-3 * (1 + abs(b_a))  # both within the tolerance
        assert _objective_grad_max(X[idx[0]], y, masks[idx[1]], chunked[idx], 2.0, standardize) < 3e-7
    one_chunk = fit_logreg_torch(X, y, masks, copy_budget=0, chunk_rows=10**6, **kw)
    assert np.array_equal(one_chunk.coef, copy.coef) and np.array_equal(one_chunk.intercept, copy.intercept)


def test_torch_warm_start_reaches_the_same_optimum(planted):
    X = np.stack([planted.layer_array(i)[planted.valid] for i in range(2)])
    y = planted.y[np.nonzero(planted.valid)[0]]
    masks = ungrouped_pair_folds(len(y), 4, seed=0).train
    cold = fit_logreg_torch(X, y, masks, C=0.3, standardize=True, tol=1e-7)
    # warm from the other layer's solution (as a layer sweep would), and from a far-off random point
    swapped = LinearParams(cold.coef[::-1], cold.intercept[::-1], cold.mean[::-1], cold.scale[::-1])
    rng = np.random.default_rng(0)
    far = LinearParams(rng.normal(size=X.shape[-1]) * 3, np.asarray(5.0))
    for init in (swapped, far):
        warm = fit_logreg_torch(X, y, masks, C=0.3, standardize=True, tol=1e-7, init=init)
        assert warm.info["converged"].all()
        w_c, b_c = cold.folded()
        w_w, b_w = warm.folded()
        for idx in np.ndindex(2, 4):
            assert _cos(w_c[idx], w_w[idx]) > 0.99999
            assert abs(b_c[idx] - b_w[idx]) < 1e-3 * (1 + abs(b_c[idx]))
    at_optimum = fit_logreg_torch(X, y, masks, C=0.3, standardize=True, tol=1e-7, init=cold)
    assert at_optimum.info["n_iter"].max() <= 2 < cold.info["n_iter"].min()


def test_weighted_metrics_match_sklearn_on_repeated_rows():
    rng = np.random.default_rng(0)
    s = np.round(rng.normal(size=300), 1)  # ties on purpose
    y = (rng.random(300) < 1 / (1 + np.exp(-2 * s))).astype(int)
    w = rng.integers(0, 4, size=(3, 300))
    for b in range(3):
        rep = np.repeat(np.arange(300), w[b])
        assert auroc(s, y, w[b:b + 1])[0] == pytest.approx(roc_auc_score(y[rep], s[rep]), abs=1e-12)
        fpr, tpr, _ = roc_curve(y[rep], s[rep])
        assert tpr_at_fpr(s, y, 0.05, w[b:b + 1])[0] == pytest.approx(tpr[fpr <= 0.05].max(), abs=1e-12)
        assert accuracy(1 / (1 + np.exp(-s)), y, 0.5, w[b:b + 1])[0] == pytest.approx(
            ((s[rep] >= 0) == (y[rep] == 1)).mean())  # flag = score >= threshold, the guard's convention


def test_bootstrap_ci_contains_point_and_shrinks():
    rng = np.random.default_rng(1)
    widths = []
    for n in (60, 600):
        groups = np.repeat(np.arange(n), 3)
        y = np.repeat(np.arange(n) % 2, 3)
        s = y + rng.normal(size=len(y)) * 1.5
        res = summarize(s, y, groups, n_boot=400, seed=0)
        for k in ("auroc", "acc", "tpr@0.05fpr"):
            assert res[k]["lo"] <= res[k]["value"] <= res[k]["hi"]
        widths.append(res["auroc"]["hi"] - res["auroc"]["lo"])
    assert widths[1] < widths[0] * 0.6
    w = bootstrap_weights(np.array(["a", "a", "b"]), 50, seed=0)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 0] + w[:, 2] == 2).all()  # 2 prompts drawn per replicate


def test_threshold_at_fpr_constructed():
    benign = np.arange(100) / 100.0  # 0.00 .. 0.99
    t = threshold_at_fpr(benign, 0.05)
    assert t == pytest.approx(0.945)
    assert (benign > t).sum() == (benign >= t).sum() == 5
    t0 = threshold_at_fpr(benign, 0.0)
    assert t0 > 0.99 and (benign >= t0).sum() == 0
    tied = np.r_[np.zeros(90), np.full(10, 0.5)]  # ties at the cut: flag none rather than exceed the target
    assert (tied >= threshold_at_fpr(tied, 0.05)).sum() == 0
    scores = np.r_[benign, [0.90, 0.95, 0.97, 0.999]]
    y = np.r_[np.zeros(100, int), np.ones(4, int)]
    r = rates_at_threshold(scores, y, t)
    assert r["fpr"] == pytest.approx(0.05) and r["tpr"] == pytest.approx(0.75)
    p = np.full(1000, 0.8)
    y = (np.arange(1000) < 800).astype(int)
    assert expected_calibration_error(p, y) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(np.full(1000, 0.3), y) == pytest.approx(0.5)


def _probeset(rng, standardize=True) -> ProbeSet:
    L, d = 3, 10
    return ProbeSet(layers=[2, 5, 7], weights=rng.normal(size=(L, d)), bias=rng.normal(size=L),
                    hook="blocks.{}.hook_resid_post", position="probe", best_layer=5, threshold=0.8,
                    mean=rng.normal(size=(L, d)) if standardize else None,
                    std=np.exp(rng.normal(size=(L, d))) if standardize else None,
                    metrics={"auroc": [0.5, 0.9, float("nan")]},
                    provenance={"model_id": "m", "weights_sha256": "abc", "template_hash": "t1",
                                "span_ids": [1, 2, 3]}, config={"C": 1.0})


def test_probeset_roundtrip_score_and_sklearn(tmp_path):
    rng = np.random.default_rng(0)
    ps = _probeset(rng)
    ps.save(tmp_path / "p")
    back = ProbeSet.load(tmp_path / "p")
    for name in ("weights", "bias", "mean", "std"):
        assert np.array_equal(getattr(ps, name), getattr(back, name))
    assert (back.layers, back.hook, back.best_layer, back.threshold) == (ps.layers, ps.hook, 5, 0.8)
    assert back.provenance == ps.provenance and back.metrics["auroc"][2] is None
    h = rng.normal(size=(4, 6, 10)).astype(np.float32)
    direct = (h - ps.mean[1]) / ps.std[1] @ ps.weights[1].astype(np.float64) + ps.bias[1]
    assert np.allclose(back.logit(h), direct, atol=1e-5)
    ht = torch.from_numpy(h)
    assert torch.allclose(back.score(ht, 7), torch.from_numpy(back.score(h, 7)), atol=1e-6)
    sk = back.to_sklearn(5)
    assert np.allclose(sk.predict_proba(h.reshape(-1, 10))[:, 1], back.score(h).reshape(-1), atol=1e-6)
    d = back.direction(2)
    assert np.isclose(np.linalg.norm(d), 1.0, atol=1e-6)
    step = back.logit(h[0, 0] + d, 2) - back.logit(h[0, 0], 2)
    assert step > 0
    ps.save(tmp_path / "q.json")
    assert (tmp_path / "q.safetensors").exists() and ProbeSet.load(tmp_path / "q.safetensors").best_layer == 5


def test_probeset_refuses_mismatched_provenance(tmp_path):
    ps = _probeset(np.random.default_rng(1), standardize=False)
    ps.save(tmp_path)
    ok = {"model_id": "m", "weights_sha256": "abc", "template_hash": "t1", "span_ids": np.array([1, 2, 3]),
          "hooks": ["blocks.{}.hook_resid_post"], "other": "ignored"}
    ProbeSet.load(tmp_path, expect_provenance=ok)
    for key, bad in [("weights_sha256", "zzz"), ("template_hash", "t2"),
                     ("span_ids", [1, 2]), ("hooks", ["blocks.{}.hook_resid_pre"])]:
        with pytest.raises(UserError):
            ProbeSet.load(tmp_path, expect_provenance={**ok, key: bad})
    # identity by content: the model id decides only when a side has no weights hash
    ProbeSet.load(tmp_path, expect_provenance={**ok, "model_id": "x"})  # same weights under another name
    with pytest.raises(UserError, match="model_id 'm'"):
        ProbeSet.load(tmp_path, expect_provenance={**ok, "model_id": "x", "weights_sha256": None})
    with pytest.raises(UserError):
        ProbeSet.load(tmp_path / "missing")


def test_run_sweep_per_depth_fit_and_by_source(planted):
    from interp.probes.sweep import SweepPlan, run_sweep

    def loader(layer, position):
        return planted.layer(layer)

    cfg = SweepPlan(folds=3, n_boot=30, per_depth_fit=True, baselines=("prompt", "shuffled"), target_fpr=0.05)
    res = run_sweep(loader, [0, 1], ProbeConfig(), cfg)
    assert res.best_layer == 1 and res.oof["probe"].shape == (2, 240, 5)
    assert res.per_layer["probe"][1]["auroc"]["value"] > 0.98
    assert abs(res.per_layer["probe"][0]["auroc"]["value"] - 0.5) < 0.15
    per_depth = res.per_depth["probe"][1]
    assert len(per_depth) == 5 and min(s["auroc"]["value"] for s in per_depth) > 0.95  # every depth has both labels
    # prompt-only baseline: one score per prompt, identical across its depths
    p = res.oof["prompt"][1]
    assert np.allclose(np.nanmax(p, 1), np.nanmin(p, 1))
    assert "threshold" not in res.best  # arrays alone: no answer lengths, so no per-answer numbers
    cfg = SweepPlan(n_boot=0, baselines=(), train_sources=["src0"], test_sources=["src1"])
    res = run_sweep(loader, [1], ProbeConfig(), cfg)
    tested = np.isfinite(res.oof["probe"][0]).any(1)
    assert res.split["kind"] == "by-source" and np.array_equal(tested, planted.sources == "src1")


def test_sweep_with_a_hard_negative_weight_fits_its_difference_of_means_baseline_unweighted(planted):
    """Row weights belong to the logistic regression: the sweep's diffmeans baseline runs plain beside them."""
    from interp.probes.sweep import SweepPlan, run_sweep

    res = run_sweep(lambda layer, position: planted.layer(layer), [1], ProbeConfig(hard_negative_weight=3.0),
                    SweepPlan(folds=3, n_boot=0, baselines=("diffmeans",)))
    assert np.isfinite(res.oof["diffmeans"][0]).any() and res.per_layer["probe"][0]["auroc"]["value"] > 0.98


def test_sweep_that_fails_mid_loop_gives_torch_its_threads_back(planted, monkeypatch):
    """A sweep stopped by an error after its load follower dropped a thread leaves torch as it found it."""
    import torch

    import interp.probes.sweep as sweep
    from interp.threads import LoadFollower

    class Busy(LoadFollower):  # another process is always busy: the first tick drops to one thread
        def tick(self):
            self.full = self.full or torch.get_num_threads()
            self.set(torch, 1)

    def loader(layer, position):
        if layer == 1:
            raise RuntimeError("the store went away")
        return planted.layer(layer)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(sweep, "LoadFollower", Busy)
    try:
        with pytest.raises(RuntimeError, match="went away"):
            sweep.run_sweep(loader, [0, 1], ProbeConfig(), sweep.SweepPlan(folds=3, n_boot=0, baselines=()))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_auroc_within_compares_only_pairs_scored_by_one_model():
    """Two fold models that rank perfectly on their own scales: within-fold AUROC is 1; pooling the folds (two
    models' scores on one axis) gives a number about neither. Weights resample rows as elsewhere."""
    from interp.probes.metrics import auroc_within

    y = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.15, 0.1, 0.05])  # fold 1's model scores everything low
    fold = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    assert auroc_within(s, y, fold) == 1.0 and auroc(s, y) == pytest.approx(0.75)
    w = np.array([[1, 1, 1, 1, 1, 1, 1, 1], [2, 0, 1, 1, 0, 0, 1, 1]], float)
    np.testing.assert_allclose(auroc_within(s, y, fold, w), [1.0, 1.0])  # block 1 has no positives in row 2
    assert auroc_within(s, 1 - y, fold) == 0.0


def test_sweep_per_answer_threshold_is_set_on_own_benign_answers_only(planted):
    """With answer information the sweep's threshold is set on the model's own benign answers (not third-party
    text), on the guard's checks including each answer's end slot."""
    from interp.probes.answers import Deployed
    from interp.probes.loso import AnswerInfo
    from interp.probes.protocol import Schedule
    from interp.probes.sweep import SweepPlan, run_sweep

    def loader(layer, position):
        data = planted.layer(layer)
        data.X_end = planted.end_array(layer)
        return data

    kinds = np.where(planted.sources == "src0", "own", "dataset")  # src1 plays third-party text
    answers = AnswerInfo(Deployed(planted.n_tokens, np.ones(240, bool), None), kinds)
    cfg = SweepPlan(folds=3, n_boot=20, baselines=(), target_fpr=0.05, schedule=Schedule(stride=10))
    res = run_sweep(loader, [1], ProbeConfig(), cfg, answers=answers)
    th = res.best["threshold"]
    own_benign = int(((planted.y == 0) & (kinds == "own")).sum())
    assert th["n_controls"] == own_benign < int((planted.y == 0).sum())
    assert th["fpr"]["n"] == own_benign and th["answers"]["coverage"] == 1.0
    assert list(th["fpr_by_source"]) == ["src0", "src1"]  # own answers first
    assert th["answers"]["checks"] == sum(len(cfg.schedule.depths(n)) for n in planted.n_tokens)


def test_sweep_calibration_names_incomplete_answers_and_an_unresolved_target(planted):
    """The sweep's threshold follows train's rules (issue 33): every own benign answer incomplete is that error
    (it named --calibrate-on own, which cannot help); some incomplete warns with the count; a target the answers
    cannot resolve warns and reports no in-sample FPR."""
    from interp.probes.answers import Deployed
    from interp.probes.loso import AnswerInfo
    from interp.probes.protocol import Schedule
    from interp.probes.sweep import SweepPlan, run_sweep

    def loader(layer, position):
        data = planted.layer(layer)
        data.X_end = planted.end_array(layer)
        return data

    kinds = np.where(planted.sources == "src0", "own", "dataset")
    own_benign = (planted.y == 0) & (kinds == "own")
    cfg = SweepPlan(folds=3, n_boot=0, baselines=(), target_fpr=0.001, schedule=Schedule(stride=10))
    none_whole = AnswerInfo(Deployed(planted.n_tokens, ~own_benign, None), kinds)
    with pytest.raises(UserError, match=r"all \d+ benign calibration answers stop before the answer length"):
        run_sweep(loader, [1], ProbeConfig(), cfg, answers=none_whole)
    some = own_benign & (np.arange(240) % 3 == 0)
    with pytest.warns(UserWarning) as caught:
        res = run_sweep(loader, [1], ProbeConfig(), cfg, answers=AnswerInfo(Deployed(planted.n_tokens, ~some, None),
                                                                            kinds))
    said = " ".join(str(w.message) for w in caught)
    assert f"{int(some.sum())} benign calibration answers stop before the answer length" in said
    assert "cannot resolve a per-answer FPR of 0.001" in said
    th = res.best["threshold"]
    assert th["resolved"] is False and th["fpr"] is None and th["answers"]["excluded_incomplete"] == int(some.sum())


def test_damaged_probe_set_files_are_one_line_errors(tmp_path):
    """Truncated JSON or safetensors, missing fields and non-finite weights: one line naming the file."""
    ps = _probeset(np.random.default_rng(1), standardize=False)
    js = ps.save(tmp_path)
    st = js.with_suffix(".safetensors")
    text, blob = js.read_text(), st.read_bytes()
    js.write_text(text[: len(text) // 2])
    with pytest.raises(UserError, match="damaged or truncated"):
        ProbeSet.load(tmp_path)
    js.write_text(text)
    st.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UserError, match="damaged or truncated"):
        ProbeSet.load(tmp_path)
    st.write_bytes(blob)
    meta = json.loads(text)
    del meta["threshold"]
    js.write_text(json.dumps(meta))
    with pytest.raises(UserError, match="missing threshold"):
        ProbeSet.load(tmp_path)
    js.write_text(text)
    ProbeSet.load(tmp_path)  # restored: loads again


def test_leave_one_source_out_compares_scores_of_one_fold_model(planted, monkeypatch):
    """Fold models that rank perfectly but sit on different scales (fold f adds 10 f to every score): each
    held-out source's AUROC must still be 1 (pairs within one fold model); pooling across folds would not be."""
    import interp.probes.loso as loso
    from interp.probes.cv import grouped_folds
    from interp.probes.metrics import auroc
    from interp.probes.sweep import SweepPlan

    data = planted.layer(1)
    split = grouped_folds(data.y, data.groups, 3, seed=0)
    fold = np.argmax(split.test, axis=0)

    def perfect(data, split_, probe, end=False, **kw):
        p = np.where(data.valid, (data.y + 10.0 * fold)[:, None] + 0.01 * data.depths[None], np.nan)
        return (p, np.full(len(data.y), np.nan)) if end else p

    monkeypatch.setattr(loso, "oof_scores", perfect)
    res = loso.leave_one_source_out(data, split, ProbeConfig(), SweepPlan(n_boot=20))
    assert [r["probe"]["auroc"]["value"] for r in res["rows"]] == [1.0, 1.0]
    assert res["macro"]["probe"]["value"] == 1.0 and all(e["macro"]["value"] == 1.0
                                                          for e in res["per_depth"]["probe"])
    p, _ = perfect(data, split, None, end=True)
    rows, cols = np.nonzero(np.isfinite(p))
    assert auroc(p[rows, cols], data.y[rows]) < 0.9  # what a pooled AUROC over the folds reports


def test_sweep_holds_one_layers_activations_at_a_time():
    """The sweep streams layers: when it reads a layer (or the best one again for leave-one-source-out), no
    earlier layer's data is alive, so peak memory does not grow with the layer count (scripts/bench_scale.py)."""
    import weakref

    from interp.probes.sweep import SweepPlan, run_sweep

    ss = SyntheticSet(SyntheticSpec(n_prompts=80, n_depths=3, d_model=8, n_layers=4, signal=(0.5, 1.0, 3.0, 2.0)))
    refs, alive_at_read = [], []

    def loader(layer, position):
        alive_at_read.append(sum(r() is not None for r in refs))
        data = ss.layer(layer)
        refs.append(weakref.ref(data))
        return data

    res = run_sweep(loader, [0, 1, 2, 3], ProbeConfig(), SweepPlan(baselines=(), n_boot=0))
    assert len(alive_at_read) == 5 and alive_at_read == [0] * 5  # four layers, then the best again for LOSO
    assert res.best_layer == 2 and res.loso
