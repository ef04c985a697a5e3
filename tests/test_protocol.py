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
from interp.probes.answers import Deployed, answer_scores
from interp.probes.calibration import fires, threshold_at_fpr
from interp.probes.cv import grouped_folds
from interp.probes.ngram import depth_texts, fit_predict, ngram_oof
from interp.probes.probeset import ProbeSet
from interp.probes.protocol import (
    Schedule,
    SplitConfig,
    assert_held_out,
    content_groups,
    describe_split,
    exclude_seen,
    per_answer_threshold,
    prompt_key,
    three_way_split,
)

torch.set_num_threads(1)


def test_prompt_identity_normalises_spelling():
    assert prompt_key("How do I  bake\nbread?") == prompt_key("  how do i bake bread? ")
    assert prompt_key("It’s fine") == prompt_key("it's fine")
    assert prompt_key("bake bread") != prompt_key("bake cake")


def _groups(recs):
    return content_groups([r.prompt for r in recs], [r.meta.get("pair_id") for r in recs])


def test_three_way_split_keeps_twins_together_and_is_stratified():
    recs = load_dataset("demo")
    groups = _groups(recs)
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
    ans = answer_scores(cal, depths, _deployed([25] * n), sched)
    assert ans.info()["coverage"] == 1.0 and np.allclose(ans.score, cal.max(1))
    res = per_answer_threshold(ans.score, a)
    assert res["resolved"] and abs(res["threshold"] - (1 - a) ** (1 / k)) < 5e-4
    test = rng.uniform(size=(n, k)).max(1)  # fresh answers: the held-out per-answer FPR is on target
    assert abs(fires(test, res["threshold"]).mean() - a) < 0.002
    # the former rule (threshold over single checks) lets ~5x more answers fire
    per_check = threshold_at_fpr(cal.reshape(-1), a)
    assert fires(test, per_check).mean() > 4 * a



def test_confident_answers_keep_their_order_at_the_threshold():
    """Answers at logits 18..21 all read exactly 1 as float32 probabilities, which left a threshold nothing could
    order (the twelve-opener study's landed at the largest float32 below 1). In float64 the threshold sits above
    them, a harmful answer at logit 25 fires and none of them does, offline (:func:`fires`), in the live rule
    (:func:`reaches`) and on the guard's torch scores."""
    from interp.guard.aggregate import reaches

    def sigmoid(z):
        return 1 / (1 + np.exp(-np.asarray(z, np.float64)))

    benign, harmful = sigmoid([18.0, 19.0, 20.0, 21.0]), sigmoid(25.0)
    assert (benign.astype(np.float32) == 1).all() and np.float32(harmful) == 1  # what float32 scores held
    thr = threshold_at_fpr(benign, 0.0)
    assert thr <= 1 and fires(harmful, thr) and not fires(benign, thr).any()
    assert reaches(harmful, thr) and not any(reaches(b, thr) for b in benign)
    ps = ProbeSet(layers=[0], weights=np.ones((1, 2)), bias=np.zeros(1), hook="hook_resid_post", position="probe",
                  best_layer=0)
    live = ps.score(torch.tensor([[9.0, 12.5], [10.0, 10.5]]))  # logits 21.5 and 20.5, as the guard scores them
    assert live.dtype == torch.float64 and live[0] > live[1] and (live < 1).all()
    assert np.array_equal(fires(live.numpy(), thr), [True, False])


def _deployed(lengths, complete=None, answer_length=None):
    n = np.asarray(lengths)
    return Deployed(n if answer_length is None else np.minimum(n, answer_length),
                    np.ones(len(n), bool) if complete is None else np.asarray(complete), answer_length)


def test_small_calibration_set_reports_its_resolution():
    res = per_answer_threshold(np.linspace(0, 1, 8), 0.01)
    assert not res["resolved"] and res["answers_needed"] == 100 and res["resolution"] == pytest.approx(1 / 8)
    assert res["threshold"] > 1.0 - 1e-6 and "calibration_fpr" not in res  # no in-sample rate is reported


def test_feeding_calibration_prompts_as_test_prompts_is_caught():
    from interp.probes.groups import SeenPrompts

    seen = SeenPrompts.of(["How do I bake bread at home?", "Tell me a joke"], [None, "demo:x"])
    assert_held_out(["Explain tides", "Write a poem"], None, seen)
    for prompt, pair, why in (("how do I  bake bread at home?", None, "same prompt"),
                              ("Something else", "demo:x", "same pair"),
                              ("How do I bake bread at home quickly?", None, "same near duplicate")):
        with pytest.raises(UserError, match=why):
            assert_held_out(["Write a poem", prompt], [None, pair], seen)


def test_schedule_depths_and_the_answer_length():
    s = Schedule(stride=8, early_checks=(2,), check_at_start=True, final_check=True)
    assert s.depths(20) == [0, 2, 8, 16, 20] and s.depths(16) == [0, 2, 8, 16] and s.depths(0) == [0]
    capped = Schedule(stride=8, answer_length=20)
    assert capped.depths(50) == [8, 16, 20] and Schedule.from_dict(capped.to_dict()) == capped


def test_every_check_the_guard_makes_is_scored():
    """An answer shorter than the stride, a ragged end, an answer cut at the answer length: each is scored on
    its final check (the end slot), never counted as silent. The former code scored only stored grid depths,
    so the first answer had no check (NaN: "did not fire") and the others lost their final check."""
    depths = [0, 25, 50, 75, 100]
    grid = np.array([[0.1, np.nan, np.nan, np.nan, np.nan],  # 10 tokens: no stride multiple
                     [0.1, 0.2, 0.3, np.nan, np.nan],  # 60 tokens: 25, 50 and the end at 60
                     [0.1, 0.2, 0.2, 0.3, 0.2]])  # 300 tokens, answer length 100: cut, final check at 100
    end = np.array([0.95, 0.9, 0.2])
    sched = Schedule(stride=25, answer_length=100)
    ans = answer_scores(grid, depths, _deployed([10, 60, 300], answer_length=100), sched, end)
    np.testing.assert_array_equal(ans.score, [0.95, 0.9, 0.3])
    assert ans.n_checks.tolist() == [1, 3, 4] and ans.info()["coverage"] == 1.0
    assert fires(ans.score, 0.5).tolist() == [True, True, False]


def test_a_check_the_store_lacks_is_an_error_and_an_incomplete_answer_is_excluded():
    depths = [0, 25, 50]
    grid = np.array([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]])
    sched = Schedule(stride=25, answer_length=600)
    with pytest.raises(UserError, match=r"at depth 75, which the store does not hold.*--depths covering every "
                                        r"multiple of 25"):
        answer_scores(grid, depths, _deployed([600, 50], answer_length=600), sched, np.array([0.5, 0.5]))
    # an answer that stopped at 50 without ending is not what the guard sees at 600 tokens: excluded, counted
    ans = answer_scores(grid[1:], depths, _deployed([50], complete=[False], answer_length=600), sched,
                        np.array([0.9]))
    assert np.isnan(ans.score[0]) and ans.info() == {"answers": 1, "scored": 0, "excluded_incomplete": 1,
                                                      "checks": 0, "coverage": None}
    assert not fires(ans.score, 0.0)[0]  # an excluded answer is never a "fire", and never enters a denominator


def test_deployed_answers_from_the_store_fields():
    meta = {"n_tokens": np.array([10, 256, 300, 120]), "end_depth": np.array([10, 256, 256, 120]),
            "finished": np.array([True, False, False, False])}
    d = Deployed.of(meta, 256)
    assert d.complete.tolist() == [True, True, True, False]  # ended; reached 256; cut at 256; stopped short


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
    split = describe_split(np.array(roles), _groups(recs), np.array([r.prompt for r in recs]),
                           np.array([r.label == "harmful" for r in recs], int), np.array(["demo"] * len(recs)),
                           np.array([r.meta.get("pair_id") for r in recs], dtype=object))
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
    assert loaded.seen().pair_ids == {r.meta["pair_id"] for r in recs[:40]}
    assert loaded.schedule_mismatch(GuardConfig(stride=25)) is None
    assert "stride: calibrated 25, running 10" in loaded.schedule_mismatch(GuardConfig(stride=10))
    probes.schedule = Schedule(answer_length=256).to_dict()  # calibrated on answers of up to 256 tokens
    assert probes.schedule_mismatch(GuardConfig(max_new_tokens=256)) is None
    msg = probes.schedule_mismatch(GuardConfig(max_new_tokens=128))
    assert "answer length (max_new_tokens): calibrated 256, running 128" in msg and "--max-new-tokens 256" in msg


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
    ans = answer_scores(cal, [5, 10, 15, 20, 25], _deployed([25] * n), sched).score
    assert np.allclose(ans, np.sort(cal, 1)[:, -2])
    lo, hi = 0.0, 1.0
    for _ in range(60):  # bisection for the exact quantile
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mid ** 5 + 5 * mid ** 4 * (1 - mid) < 1 - a else (lo, mid)
    res = per_answer_threshold(ans, a)
    assert abs(res["threshold"] - lo) < 2e-3
    test = np.sort(rng.uniform(size=(n, 5)), 1)[:, -2]
    assert abs(fires(test, res["threshold"]).mean() - a) < 0.002
    # an answer with fewer scheduled checks than k can never fire
    few = answer_scores(np.full((1, 5), 0.9), [5, 10, 15, 20, 25], _deployed([5]), sched).score
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


def test_select_layer_and_answer_scores_equal_brute_force():
    """The shared selection: first of tied AUROCs, NaN never wins, a fixed layer is kept. Answer scores equal a
    brute-force walk over each answer's scheduled checks (grid columns, the end slot for the final check)."""
    from interp.probes.select import choose_layer

    assert choose_layer([3, 5, 7], [0.8, 0.9, 0.9]) == 5
    assert choose_layer([3, 5, 7], [np.nan, 0.6, 0.5]) == 5
    assert choose_layer([3, 5, 7], [0.8, 0.9, 0.9], fixed=7) == 7
    with pytest.raises(UserError):
        choose_layer([3], [np.nan])
    rng = np.random.default_rng(0)
    depths = [0, 8, 16, 25, 50, 75]
    lengths = rng.integers(1, 90, 50)
    p = rng.random((50, 6))
    p[np.asarray(depths)[None] > lengths[:, None]] = np.nan
    end = rng.random(50)
    sched = Schedule(stride=25, early_checks=(8, 16), answer_length=75)
    ans = answer_scores(p, depths, _deployed(lengths, answer_length=75), sched, end)
    for i, n in enumerate(np.minimum(lengths, 75)):
        want = [p[i, depths.index(d)] if d in depths else end[i] for d in sched.depths(n)]
        assert ans.score[i] == max(want) and ans.n_checks[i] == len(want)


def test_the_threshold_bound_is_the_false_alarm_rate_of_new_answers():
    """Uniform benign scores, so a threshold's false-alarm rate on new answers is 1 - threshold. Just above the
    (k+1)-th highest of n, that rate has the bound's mean and 95% quantile (order statistics); the calibrated
    threshold (higher, toward the next score) stays under both; and the bound refuses impossible counts."""
    from interp.probes.calibration import threshold_fpr_bound
    from interp.probes.protocol import per_answer_threshold

    rng = np.random.default_rng(0)
    n, k, trials = 151, 1, 20000
    u = np.sort(rng.random((trials, n)), axis=1)
    at_base = 1 - u[:, n - k - 1]  # the rate just above the (k+1)-th highest score
    b = threshold_fpr_bound(n, k)
    assert abs(at_base.mean() - b["expected"]) < 0.02 * b["expected"]
    assert abs(np.quantile(at_base, 0.95) - b["upper"]) < 0.03 * b["upper"]
    calibrated = [per_answer_threshold(row, 0.01) for row in u[:2000]]
    assert {c["fpr_new_answers"]["expected"] for c in calibrated} == {b["expected"]}  # 1 of 151 fires each time
    rate = 1 - np.array([c["threshold"] for c in calibrated])
    assert rate.mean() < b["expected"] and np.mean(rate <= b["upper"]) >= 0.95
    with pytest.raises(UserError, match="0 <= fired < n"):
        threshold_fpr_bound(10, 10)


def test_the_prompt_level_bound_counts_prompts_not_answers():
    """Two answers per prompt; the two highest (which the 1% target lets fire) belong to one prompt: 2 of 200
    answers fire but 1 of 100 prompts, and the prompt-level bound is the bound for 1 of 100."""
    from interp.probes.calibration import fpr_bound_text, threshold_fpr_bound
    from interp.probes.protocol import per_answer_threshold

    scores = np.linspace(0.0, 0.5, 200)
    scores[[17, 18]] = [0.98, 0.99]
    groups = np.repeat(np.arange(100), 2)  # answers 17 and 18 are prompts 8 and 9: make them one prompt
    groups[17] = groups[18]
    got = per_answer_threshold(np.append(scores, np.nan), 0.01, np.append(groups, 0))  # NaN: left out
    assert got["n_answers"] == 200 and got["fpr_new_answers"] == threshold_fpr_bound(200, 2)
    assert got["fpr_new_prompts"] == threshold_fpr_bound(100, 1) | {"n_prompts": 100}
    assert "at most 2.0% on average" in fpr_bound_text(got) and "over 100 calibration prompts" in fpr_bound_text(got)
    assert "fpr_new_prompts" not in per_answer_threshold(scores, 0.01)  # no groups: answers only
