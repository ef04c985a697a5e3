"""The held-out protocol: split by prompt group, per-answer threshold, schedule = what the guard does, exclusion
of seen prompts in evaluations, and the n-gram baseline on the probe's folds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from interp import UserError
from interp.data import load_dataset
from interp.guard.aggregate import Aggregation
from interp.probes.calibration import threshold_at_fpr
from interp.probes.cv import grouped_folds
from interp.probes.ngram import depth_texts, fit_predict, ngram_oof
from interp.probes.probeset import ProbeSet
from interp.probes.protocol import (
    Schedule,
    SplitConfig,
    answer_scores,
    assert_disjoint,
    describe_split,
    exclude_seen,
    group_key,
    per_answer_threshold,
    prompt_key,
    three_way_split,
)

torch.set_num_threads(1)


def test_prompt_identity_normalises_spelling():
    assert prompt_key("How do I  bake\nbread?") == prompt_key("  how do i bake bread? ")
    assert prompt_key("It’s fine") == prompt_key("it's fine")
    assert prompt_key("bake bread") != prompt_key("bake cake")
    assert group_key("x", "w-1") == "pair:w-1" and group_key("x") == f"prompt:{prompt_key('x')}"


def test_three_way_split_keeps_twins_together_and_is_stratified():
    recs = load_dataset("demo")
    groups = np.array([group_key(r.prompt, r.meta.get("pair_id")) for r in recs])
    y = np.array([r.label == "harmful" for r in recs], int)
    roles = three_way_split(groups, y, SplitConfig(0.25, 0.25), seed=0)
    for g in np.unique(groups):
        assert len(set(roles[groups == g])) == 1  # a twin pair never straddles two roles
    counts = {r: len(np.unique(groups[roles == r])) for r in ("train", "calibration", "test")}
    assert counts == {"train": 20, "calibration": 10, "test": 10}
    assert np.array_equal(roles, three_way_split(groups, y, SplitConfig(0.25, 0.25), seed=0))
    assert not np.array_equal(roles, three_way_split(groups, y, SplitConfig(0.25, 0.25), seed=1))
    with pytest.raises(UserError, match="sum < 1"):
        three_way_split(groups, y, SplitConfig(0.5, 0.5))


def test_per_answer_threshold_meets_target_on_known_distribution():
    # k iid U(0,1) checks per benign answer: max has CDF t^k, so the per-answer threshold is (1 - a)^(1/k)
    rng = np.random.default_rng(0)
    k, a, n = 5, 0.01, 40_000
    depths = [5, 10, 15, 20, 25]
    sched = Schedule(stride=5, final_check=False)
    cal = rng.uniform(size=(n, k))
    ans, cov = answer_scores(cal, depths, [25] * n, sched)
    assert cov["coverage"] == 1.0 and np.allclose(ans, cal.max(1))
    res = per_answer_threshold(ans, a)
    assert res["resolved"] and abs(res["threshold"] - (1 - a) ** (1 / k)) < 5e-4
    test = rng.uniform(size=(n, k)).max(1)  # fresh answers: the held-out per-answer FPR is on target
    assert abs((test > res["threshold"]).mean() - a) < 0.002
    # the former rule (threshold over single checks) lets ~5x more answers fire
    per_check = threshold_at_fpr(cal.reshape(-1), a)
    assert (test > per_check).mean() > 4 * a


def test_small_calibration_set_reports_its_resolution():
    res = per_answer_threshold(np.linspace(0, 1, 8), 0.01)
    assert not res["resolved"] and res["answers_needed"] == 100 and res["resolution"] == pytest.approx(1 / 8)
    assert res["threshold"] > 1.0 - 1e-6 and "calibration_fpr" not in res  # no in-sample rate is reported


def test_feeding_calibration_answers_as_test_answers_is_caught():
    ids = ["a", "b", "c"]
    assert_disjoint(["d", "e"], ids)
    with pytest.raises(UserError, match="also used for calibration"):
        assert_disjoint(ids, ids)


def test_schedule_depths_and_store_coverage():
    s = Schedule(stride=8, early_checks=(2,), check_at_start=True, final_check=True)
    assert s.depths(20) == [0, 2, 8, 16, 20] and s.depths(16) == [0, 2, 8, 16] and s.depths(0) == [0]
    scores = np.array([[0.1, 0.9, 0.2], [0.3, np.nan, np.nan]])
    ans, cov = answer_scores(scores, [0, 8, 16], [16, 5], Schedule(stride=8, check_at_start=True))
    # row 1 (5 tokens): checks at 0 and 5 (final); depth 5 is not stored
    assert ans.tolist() == [0.9, 0.3] and cov["scheduled_checks"] == 5 and cov["scored_checks"] == 4
    assert cov["missing_depths"] == [5]


def test_guard_checks_each_answer_on_its_own_schedule():
    """What the guard does in a batch of answers of different lengths equals Schedule.depths per answer (a
    neighbour's final check must not add a check to the other rows)."""
    from interp.guard.generator import GuardedGenerator
    from interp.guard.types import GuardConfig
    from interp.spans.derive import derive_safety_spans, format_prompt_ids
    from interp.testing import tiny_model

    model, tok = tiny_model("qwen2", n_layers=2)
    spans = derive_safety_spans(tok)
    prompts = [format_prompt_ids(tok, p) for p in ("Hi", "Write a poem.", "How do I bake bread?")]
    text = tok("the quick brown fox jumps over the lazy dog " * 6, add_special_tokens=False)["input_ids"]
    forced = [text[:7], text[:13], text[:30]]
    for cfg in (GuardConfig(mode="rk", stride=5, early_checks=(2,), final_check=True, lookahead=2,
                            max_new_tokens=40, buffer=False),
                GuardConfig(mode="rk", stride=4, check_at_start=True, final_check=True, lookahead=2,
                            max_new_tokens=22, buffer=False)):
        gen = GuardedGenerator(model, tok, spans, cfg, detectors=("rk",), halt=False)
        res = gen.generate(prompts, forced=forced, forced_only=cfg.max_new_tokens > 30)
        gen.close()
        for r in res:
            assert [c.depth for c in r.checks] == Schedule.of(cfg).depths(len(r.generated_ids)), r.stop_reason


def _probeset_with_split(recs, roles):
    groups = np.array([group_key(r.prompt, r.meta.get("pair_id")) for r in recs])
    split = describe_split(np.array(roles), groups, np.array([r.prompt for r in recs]),
                           np.array([r.label == "harmful" for r in recs], int), np.array(["demo"] * len(recs)))
    return ProbeSet(layers=[0], weights=np.zeros((1, 4)), bias=np.zeros(1), hook="hook_resid_post",
                    position="probe", best_layer=0, split=split, schedule=Schedule().to_dict())


def test_evaluation_excludes_training_prompts_and_their_twins():
    recs = load_dataset("demo")
    # train on the harmful side of the first 10 pairs only: their benign twins must be excluded too
    roles = ["train" if r.label == "harmful" and i < 20 else "test" for i, r in enumerate(recs)]
    probes = _probeset_with_split(recs, roles)
    pairs = [("demo", r) for r in recs]
    kept, info = exclude_seen(pairs, probes)
    seen_pairs = {r.meta["pair_id"] for r, role in zip(recs, roles) if role == "train"}
    assert info["excluded"] == 20 and info["in_sample"] is False and len(kept) == 60
    assert not {r.meta["pair_id"] for _, r in kept} & seen_pairs
    kept, info = exclude_seen(pairs, probes, allow_overlap=True)
    assert len(kept) == 80 and info["in_sample"] is True and "IN-SAMPLE" in info["status"]
    everything = _probeset_with_split(recs, ["train"] * len(recs))
    with pytest.raises(UserError, match="all 80 evaluation prompts"):
        exclude_seen(pairs, everything)
    legacy = ProbeSet(layers=[0], weights=np.zeros((1, 4)), bias=np.zeros(1), hook="hook_resid_post",
                      position="probe", best_layer=0)
    with pytest.warns(UserWarning, match="in-sample status"):
        _, info = exclude_seen(pairs, legacy)
    assert info["in_sample"] is None


def test_probeset_round_trips_split_and_warns_on_other_schedule(tmp_path):
    from interp.guard.types import GuardConfig

    recs = load_dataset("demo")
    probes = _probeset_with_split(recs, ["train"] * 40 + ["test"] * 40)
    loaded = ProbeSet.load(probes.save(tmp_path / "p"))
    assert loaded.split == json.loads(json.dumps(probes.split)) and loaded.seen() == probes.seen()
    assert loaded.schedule_mismatch(GuardConfig(stride=25)) is None
    assert "stride: calibrated 25, running 10" in loaded.schedule_mismatch(GuardConfig(stride=10))


def test_ngram_baseline_runs_on_the_probes_folds_and_equals_per_fold_fits():
    rng = np.random.default_rng(0)
    n, words = 60, ["alpha", "beta", "gamma", "delta", "omega", "sigma"]
    y = np.arange(n) % 2
    prompts = [f"question {i}" for i in range(n)]
    responses = [" ".join(rng.choice(words, 12)) + (" bomb" if y[i] else " bread") for i in range(n)]
    lengths = np.array([len(r) for r in responses])
    chars = np.stack([np.full(n, 0), lengths // 2, lengths], 1)  # the marker word only at the last depth
    valid = np.ones((n, 3), bool)
    texts = depth_texts(prompts, responses, chars)
    assert texts[0, 0] == "question 0\n" and texts[0, 2].endswith(responses[0])
    split = grouped_folds(y, np.array(prompts), 3, seed=0)
    p = ngram_oof(texts, y, valid, split)
    for f in range(3):  # slow obvious path: fit each fold's training pairs, score its test pairs
        tr, te = split.train[f], split.test[f]
        ref = fit_predict(texts[tr].reshape(-1), np.repeat(y[tr], 3), texts[te].reshape(-1))
        np.testing.assert_allclose(p[te].reshape(-1), ref, rtol=1e-12)
    from interp.probes.metrics import auroc

    assert auroc(p[:, 2], y) > 0.9  # the marker word is seen: the text baseline finds it
    assert abs(auroc(p[:, 0], y) - 0.5) < 0.2  # prompt only: nothing to find


def test_guard_warns_when_run_on_another_schedule_than_calibrated():
    from interp.guard.generator import GuardedGenerator
    from interp.guard.types import GuardConfig
    from interp.spans.derive import derive_safety_spans
    from interp.testing import tiny_model

    model, tok = tiny_model("qwen2", n_layers=2)
    spans = derive_safety_spans(tok)
    d = model.config.hidden_size
    probes = ProbeSet(layers=[0, 1], weights=np.zeros((2, d)), bias=np.zeros(2), hook="hook_resid_post",
                      position="probe", best_layer=1, threshold=0.5, schedule=Schedule(stride=16).to_dict(),
                      provenance={"template_hash": spans.template_hash, "span_ids": list(spans.span_ids)})
    with pytest.warns(UserWarning, match="another guard schedule"):
        GuardedGenerator(model, tok, spans, GuardConfig(mode="lp", stride=25), probes).close()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GuardedGenerator(model, tok, spans, GuardConfig(mode="lp", stride=16), probes).close()
        # per-depth measurements (deep-prefill curves) are not per-answer runs: no warning
        GuardedGenerator(model, tok, spans, GuardConfig(mode="lp", stride=25), probes, per_answer=False).close()


def test_k_of_n_threshold_meets_target_on_known_distribution():
    # k = 2 of 5 iid U(0,1) checks must fire: the answer score is the 2nd largest, P(X(4) <= t) = t^5 + 5 t^4 (1 - t)
    rng = np.random.default_rng(1)
    n, a = 40_000, 0.01
    sched = Schedule(stride=5, final_check=False, rule=Aggregation("k_of_n", 2, 5))  # a window of all 5 checks
    cal = rng.uniform(size=(n, 5))
    ans, _ = answer_scores(cal, [5, 10, 15, 20, 25], [25] * n, sched)
    assert np.allclose(ans, np.sort(cal, 1)[:, -2])
    lo, hi = 0.0, 1.0
    for _ in range(60):  # bisection for the exact quantile
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mid ** 5 + 5 * mid ** 4 * (1 - mid) < 1 - a else (lo, mid)
    res = per_answer_threshold(ans, a)
    assert abs(res["threshold"] - lo) < 2e-3
    test = np.sort(rng.uniform(size=(n, 5)), 1)[:, -2]
    assert abs((test > res["threshold"]).mean() - a) < 0.002
    # an answer with fewer scheduled checks than k can never fire
    few, _ = answer_scores(np.full((1, 5), 0.9), [5, 10, 15, 20, 25], [5], sched)
    assert few[0] == -np.inf
    assert Schedule.from_dict(sched.to_dict()) == sched and sched.aggregation == "2 of the last 5 checks"


@pytest.mark.parametrize("k", [1, 3])
def test_guard_halts_at_the_kth_flagged_check(k):
    from interp.guard.generator import GuardedGenerator
    from interp.guard.types import GuardConfig
    from interp.spans.derive import derive_safety_spans, format_prompt_ids
    from interp.testing import tiny_model

    model, tok = tiny_model("qwen2", n_layers=2)
    spans = derive_safety_spans(tok)
    d = model.config.hidden_size
    probes = ProbeSet(layers=[0, 1], weights=np.zeros((2, d)), bias=np.zeros(2), hook="hook_resid_post",
                      position="probe", best_layer=1, provenance={"template_hash": spans.template_hash,
                                                                  "span_ids": list(spans.span_ids)})
    # threshold 0: every check flags (scores are probabilities), so the guard halts at its k-th check
    cfg = GuardConfig(mode="lp", stride=2, aggregate="k_of_n", k_of_n=k, window=k, threshold=0.0, max_new_tokens=20,
                      refusal_message="")
    gen = GuardedGenerator(model, tok, spans, cfg, probes)
    text = tok("one two three four five six seven eight nine ten", add_special_tokens=False)["input_ids"]
    res = gen.generate([format_prompt_ids(tok, "Hi")], forced=[text[:20]])[0]
    gen.close()
    assert res.halted and res.halt_depth == 2 * k and len(res.checks) == k
    assert len(res.emitted_ids) == (0 if k == 1 else 2 * (k - 1))  # flagged-but-tolerated checks release tokens


def test_probe_set_of_another_hidden_size_is_refused_before_generation():
    from interp.guard.generator import GuardedGenerator
    from interp.guard.types import GuardConfig
    from interp.spans.derive import derive_safety_spans
    from interp.testing import tiny_model

    model, tok = tiny_model("qwen2", n_layers=2)
    spans = derive_safety_spans(tok)
    d = model.config.hidden_size + 8
    probes = ProbeSet(layers=[0, 1], weights=np.zeros((2, d)), bias=np.zeros(2), hook="hook_resid_post",
                      position="probe", best_layer=1, provenance={"template_hash": spans.template_hash,
                                                                  "span_ids": list(spans.span_ids)})
    with pytest.raises(UserError, match=f"{d}-dimensional probes but the model's hidden size is {d - 8}"):
        GuardedGenerator(model, tok, spans, GuardConfig(mode="lp"), probes)


def test_select_layer_and_every_stored_depth_threshold():
    """The shared selection: first of tied AUROCs, NaN never wins, a fixed layer is kept; the sweep's
    every-stored-depth answer score is the max over an answer's finite depths (brute force)."""
    from interp.probes.calibration import threshold_at_fpr
    from interp.probes.select import answer_threshold, choose_layer

    assert choose_layer([3, 5, 7], [0.8, 0.9, 0.9]) == 5
    assert choose_layer([3, 5, 7], [np.nan, 0.6, 0.5]) == 5
    assert choose_layer([3, 5, 7], [0.8, 0.9, 0.9], fixed=7) == 7
    with pytest.raises(UserError):
        choose_layer([3], [np.nan])
    rng = np.random.default_rng(0)
    p = rng.random((50, 6))
    p[rng.random((50, 6)) < 0.3] = np.nan
    p[0] = np.nan  # an answer with no stored check
    depths = [0, 8, 16, 25, 50, 75]
    res = answer_threshold(p, depths, np.full(50, 75), 0.1)
    brute = np.array([np.nanmax(r) if np.isfinite(r).any() else np.nan for r in p])
    np.testing.assert_array_equal(res["answer_scores"], brute)
    assert res["threshold"] == threshold_at_fpr(brute[np.isfinite(brute)], 0.1) and res["n_answers"] == 49
