"""The guard's aggregation rules (any check, k of the last n, EMA): known answers, streaming == offline, the live
guard against the rule, per-answer calibration of an aggregated rule, and bad options."""

from __future__ import annotations

import numpy as np
import pytest

from interp import UserError
from interp.guard.aggregate import AggregateConfig, Aggregation, reaches
from interp.probes.answers import Deployed, answer_scores
from interp.probes.calibration import fires
from interp.probes.protocol import Schedule, per_answer_threshold

INF = -np.inf


def test_k_of_n_known_answer():
    s = [0.1, 0.9, 0.2, 0.8, 0.7, 0.1]
    # 2 of the last 3, by hand: windows [.1] [.1 .9] [.1 .9 .2] [.9 .2 .8] [.2 .8 .7] [.8 .7 .1] -> 2nd largest
    rule = Aggregation("k_of_n", 2, 3)
    np.testing.assert_array_equal(rule.series(s), [INF, 0.1, 0.2, 0.8, 0.7, 0.7])
    assert rule.answer_statistic(s) == 0.8
    # 2 of the last 2: both adjacent checks must fire -> min of neighbours
    np.testing.assert_array_equal(Aggregation("k_of_n", 2, 2).series(s), [INF, 0.1, 0.2, 0.2, 0.7, 0.1])
    # 3 of the last 6 = 3rd largest of everything once six checks are in
    assert Aggregation("k_of_n", 3, 6).answer_statistic(s) == 0.7
    # the guard, fed one check at a time, fires first at check 4 for a threshold of 0.75, never at 0.85
    stream = rule.stream()
    fired = [reaches(stream.push(x), 0.75) for x in s]
    assert fired.index(True) == 3
    stream = rule.stream()
    assert not any(reaches(stream.push(x), 0.85) for x in s)


def test_ema_known_answer():
    s = [0.2, 1.0, 0.0, 0.6]
    # alpha 0.5: a1 = .2, a2 = .5*1 + .5*.2 = .6, a3 = .5*0 + .5*.6 = .3, a4 = .5*.6 + .5*.3 = .45
    rule = Aggregation("ema", alpha=0.5)
    np.testing.assert_allclose(rule.series(s), [0.2, 0.6, 0.3, 0.45], rtol=0, atol=1e-15)
    assert rule.answer_statistic(s) == pytest.approx(0.6, abs=1e-15)
    stream = rule.stream()
    assert [reaches(stream.push(x), 0.55) for x in s] == [False, True, False, False]


@pytest.mark.parametrize("rule", [Aggregation(), Aggregation("k_of_n", 1, 1), Aggregation("k_of_n", 2, 3),
                                  Aggregation("k_of_n", 3, 3), Aggregation("k_of_n", 2, 7),
                                  Aggregation("ema", alpha=0.3), Aggregation("ema", alpha=0.9)])
def test_streaming_equals_offline(rule):
    rng = np.random.default_rng(7)
    for _ in range(50):
        s = rng.random(int(rng.integers(1, 30))).astype(np.float32)
        stream = rule.stream()
        live = np.array([stream.push(x) for x in s])
        offline = rule.series(s)
        np.testing.assert_allclose(live, offline, rtol=1e-12, atol=1e-12)  # k-of-n: exact; EMA: float64 rounding
        assert np.float32(live.max()) == np.float32(rule.answer_statistic(s))


def test_answer_scores_use_the_rule_in_depth_order():
    depths = [5, 10, 15, 20, 25]
    scores = np.array([[0.9, 0.1, 0.95, 0.2, 0.3],
                       [0.1, 0.8, 0.85, 0.2, 0.1]])
    sched = Schedule(stride=5, final_check=False, rule=Aggregation("k_of_n", 2, 2))
    ans = answer_scores(scores, depths, _deployed([25, 25]), sched)
    np.testing.assert_array_equal(ans.score, [0.2, 0.8])  # row 0: no two adjacent checks above 0.2; row 1: 0.8, 0.85
    assert ans.info()["coverage"] == 1.0 and ans.n_checks.tolist() == [5, 5]
    ans = answer_scores(scores, depths, _deployed([5, 25]), sched)
    assert ans.score[0] == INF  # one scheduled check can never make 2 of 2


def _deployed(lengths):
    return Deployed(np.asarray(lengths), np.ones(len(lengths), bool), None)


@pytest.mark.parametrize("rule", [Aggregation("k_of_n", 2, 3), Aggregation("ema", alpha=0.3)])
def test_per_answer_calibration_of_an_aggregated_rule_meets_its_target(rule):
    """Threshold on benign calibration answers (correlated check scores); on fresh benign answers the live
    rule (the incremental stream, as the guard runs it) fires on about the target rate, never far above it."""
    rng = np.random.default_rng(3)
    target, depths = 0.05, list(range(0, 101, 10))

    def answers(n):
        z = rng.normal(size=(n, len(depths)))
        z[:, 1:] = 0.6 * z[:, :-1] + 0.8 * z[:, 1:]  # neighbouring checks correlate, as in real answers
        lens = rng.integers(30, 101, size=n)
        p = 1 / (1 + np.exp(-z))
        p[np.asarray(depths)[None] > lens[:, None]] = np.nan
        return p, lens

    sched = Schedule(stride=10, final_check=False, rule=rule)
    cal, cal_len = answers(4000)
    thr = per_answer_threshold(answer_scores(cal, depths, _deployed(cal_len), sched).score, target)
    assert thr["resolved"] and thr["n_answers"] == 4000
    test, test_len = answers(4000)
    fired = 0
    for row, n in zip(test, test_len):
        stream = rule.stream()
        fired += any(reaches(stream.push(x), thr["threshold"]) for x in row[: n // 10 + 1][1:])
    rate, sd = fired / len(test), np.sqrt(target * (1 - target) / len(test))
    assert abs(rate - target) < 4 * sd
    # the offline statistic agrees with the live rule on every test answer
    ans = answer_scores(test, depths, _deployed(test_len), sched)
    assert fired == int(fires(ans.score, thr["threshold"]).sum())


@pytest.mark.parametrize("kw, message", [
    (dict(aggregate="k_of_n", k_of_n=3, window=2), "--k-of-n 3 is larger than --window 2"),
    (dict(aggregate="k_of_n", k_of_n=1, window=0), "--window must be >= 1"),
    (dict(aggregate="ema", ema_alpha=0.0), "--ema-alpha must be in (0, 1]"),
    (dict(aggregate="ema", ema_alpha=1.5), "--ema-alpha must be in (0, 1]"),
    (dict(k_of_n=2, window=3), "apply only to --aggregate k_of_n"),
    (dict(aggregate="mean"), "--aggregate must be one of any, k_of_n, ema"),
])
def test_bad_aggregation_options_are_one_line_errors(kw, message):
    with pytest.raises(UserError, match=None) as err:
        Aggregation.of(AggregateConfig(**kw))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_train_and_guard_configs_validate_the_rule():
    from interp.guard.types import GuardConfig
    from interp.probes.train import TrainConfig

    with pytest.raises(UserError, match="--ema-alpha must be in"):
        TrainConfig(store="x.h5", aggregate="ema", ema_alpha=2.0).validate()
    with pytest.raises(UserError, match="is larger than --window"):
        GuardConfig(aggregate="k_of_n", k_of_n=4, window=3).validate()
    assert Schedule.of(TrainConfig(aggregate="k_of_n", k_of_n=2, window=3)).rule == Aggregation("k_of_n", 2, 3)


def test_canonical_rules_and_round_trip():
    assert Aggregation.of(AggregateConfig()) == Aggregation()
    assert Aggregation.of(AggregateConfig(aggregate="k_of_n", k_of_n=1, window=4)) == Aggregation()
    assert Aggregation.of(AggregateConfig(aggregate="ema", ema_alpha=1.0)) == Aggregation()
    rule = Aggregation.of(AggregateConfig(aggregate="k_of_n", k_of_n=2, window=5))
    sched = Schedule(stride=8, rule=rule)
    assert Schedule.from_dict(sched.to_dict()) == sched and sched.to_dict()["aggregation"] == "2 of the last 5 checks"
    legacy = {"stride": 25, "early_checks": [], "check_at_start": False, "final_check": True, "k_of_n": 1,
              "aggregation": "any"}  # a probe set saved before the aggregation options
    assert Schedule.from_dict(legacy) == Schedule()


@pytest.mark.parametrize("argv, message", [
    (["guard", "--model", "tiny", "--mode", "rk", "--prompt", "hi", "--aggregate", "k_of_n", "--k-of-n", "3",
      "--window", "2"], "--k-of-n 3 is larger than --window 2"),
    (["guard", "--model", "tiny", "--mode", "rk", "--prompt", "hi", "--aggregate", "k_of_n", "--window", "0"],
     "--window must be >= 1"),
    (["guard", "--model", "tiny", "--mode", "rk", "--prompt", "hi", "--aggregate", "ema", "--ema-alpha", "0"],
     "--ema-alpha must be in (0, 1]"),
    (["evaluate", "over-refusal", "--model", "tiny", "--k-of-n", "2"], "apply only to --aggregate k_of_n"),
])
def test_cli_aggregation_errors(argv, message, capsys):
    from interp.cli.main import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def _tiny_guard_setup():
    from interp.probes.probeset import ProbeSet
    from interp.spans.derive import derive_safety_spans, format_prompt_ids
    from interp.testing import tiny_model

    model, tok = tiny_model("qwen2", n_layers=2)
    spans = derive_safety_spans(tok)
    d = model.config.hidden_size
    w = np.random.default_rng(0).normal(size=(2, d)) / np.sqrt(d)  # a crafted direction: varied check scores
    probes = ProbeSet(layers=[0, 1], weights=w, bias=np.zeros(2), hook="hook_resid_post", position="probe",
                      best_layer=1, provenance={"template_hash": spans.template_hash,
                                                "span_ids": list(spans.span_ids)})
    text = tok("one two three four five six seven eight nine ten eleven twelve thirteen fourteen",
               add_special_tokens=False)["input_ids"][:24]
    return model, tok, spans, probes, [format_prompt_ids(tok, "Hi")], [text]


def _run(setup, halt=True, **kw):
    from interp.guard.generator import GuardedGenerator
    from interp.guard.types import GuardConfig

    model, tok, spans, probes, prompts, forced = setup
    cfg = GuardConfig(mode="lp", stride=2, max_new_tokens=24, refusal_message="", **kw)
    with GuardedGenerator(model, tok, spans, cfg, probes, halt=halt) as gen:
        return gen.generate(prompts, forced=forced, forced_only=True)[0]


def test_default_rule_halts_at_the_first_flagged_check():
    """The default rule is the single-check rule: every check's ``fired`` is its flag, and the guard halts at the
    first flagged check with the stream, scores and released tokens of a run that only observes."""
    setup = _tiny_guard_setup()
    seen = _run(setup, halt=False, threshold=0.0)
    scores = [c.score for c in seen.checks]
    assert len(scores) == 12 and len(set(scores)) > 6
    for thr in sorted(scores)[2:-1:3]:
        ref = _run(setup, halt=False, threshold=thr)
        res = _run(setup, threshold=thr)
        assert all(c.fired == c.flagged for c in ref.checks + res.checks)
        first = next(i for i, c in enumerate(ref.checks) if c.flagged)
        assert res.halted and res.halt_depth == ref.checks[first].depth
        assert [(c.depth, c.score, c.flagged) for c in res.checks] == [
            (c.depth, c.score, c.flagged) for c in ref.checks[:first + 1]]
        assert res.emitted_ids == ref.generated_ids[:res.halt_depth - 2]  # up to the last passed check


def test_k_of_n_guard_halts_at_the_predicted_check():
    setup = _tiny_guard_setup()
    scores = [c.score for c in _run(setup, halt=False, threshold=0.0).checks]
    depths = [2 * (i + 1) for i in range(len(scores))]
    found = 0
    for thr in sorted(set(scores)):
        flags = [s >= thr for s in scores]
        # by hand: the first check at which 2 of the last 3 checks (this one included) are flagged
        hit = [t for t in range(len(flags)) if sum(flags[max(0, t - 2):t + 1]) >= 2]
        first_any = flags.index(True)
        if not hit or hit[0] == first_any:
            continue
        res = _run(setup, threshold=float(thr), aggregate="k_of_n", k_of_n=2, window=3)
        assert res.halted and res.halt_depth == depths[hit[0]] and len(res.checks) == hit[0] + 1
        assert [c.fired for c in res.checks] == [False] * hit[0] + [True]
        assert res.checks[first_any].flagged  # flagged but tolerated: the rule needs a second one
        # observing without halting (over-refusal, attacks): every check says whether the rule fired there
        seen = _run(setup, halt=False, threshold=float(thr), aggregate="k_of_n", k_of_n=2, window=3)
        assert [c.fired for c in seen.checks] == [t in hit for t in range(len(flags))]
        found += 1
    assert found >= 2  # the crafted probe gives thresholds where the k-of-n rule halts later than any-check
    never = _run(setup, threshold=float(max(scores)), aggregate="k_of_n", k_of_n=2, window=3)
    assert not never.halted or sum(s >= max(scores) for s in scores) >= 2


def test_ema_guard_halts_where_the_stream_says():
    setup = _tiny_guard_setup()
    scores = [c.score for c in _run(setup, halt=False, threshold=0.0).checks]
    rule = Aggregation("ema", alpha=0.4)
    ema = rule.series(scores)
    thr = float(np.sort(ema)[-3])  # reached by three checks: the guard halts at the first of them
    want = next(t for t, a in enumerate(ema) if reaches(a, thr))
    res = _run(setup, threshold=thr, aggregate="ema", ema_alpha=0.4)
    assert res.halted and len(res.checks) == want + 1 and res.halt_depth == 2 * (want + 1)


def test_live_check_scores_keep_their_order_where_float32_saturates():
    """With the probe scaled so that check logits reach 17..37, the live guard's scores stay distinct and below 1
    (float64); float32 scores there all read exactly 1 and a threshold could not order them."""
    model, tok, spans, probes, prompts, forced = _tiny_guard_setup()
    base = np.array([c.score for c in _run((model, tok, spans, probes, prompts, forced), halt=False,
                                           threshold=0.0).checks])
    scale = 25.0 / np.median(np.log(base / (1 - base)))  # signed: the median check moves to logit +25
    probes.weights = probes.weights * scale
    scores = [c.score for c in _run((model, tok, spans, probes, prompts, forced), halt=False, threshold=0.0).checks]
    high = [s for s in scores if s > 1 - 1e-7]
    assert len(high) >= 2 and np.float32(high).tolist() == [1.0] * len(high)  # where float32 saturates
    assert all(s < 1 for s in high) and len(set(scores)) == len(scores)
