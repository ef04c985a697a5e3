"""Evaluation harness on a tiny random model with the built-in demo set (exactness + end-to-end files)."""

import json

import pytest
import torch

from interp.cli.main import main
from interp.evaluate.common import EvalConfig, load_guard_model
from interp.evaluate.deep_prefill import run_deep_prefill
from interp.evaluate.over_refusal import run_over_refusal
from interp.spans.derive import encode_response, format_prompt_ids
from interp.stats import mean_ci, wilson
from interp.testing import hf_greedy_text

torch.set_num_threads(1)


def test_wilson_known_values():
    assert wilson(5, 10)["lo"] == pytest.approx(0.2366, abs=1e-4)
    assert wilson(5, 10)["hi"] == pytest.approx(0.7634, abs=1e-4)
    w = wilson(0, 10)
    assert w["rate"] == 0 and w["lo"] == 0 and w["hi"] == pytest.approx(0.2775, abs=1e-4)
    assert wilson(0, 0)["rate"] is None
    b = mean_ci([1.0, 2.0, 3.0, 4.0], n_boot=500)
    assert b["mean"] == 2.5 and 1.0 <= b["lo"] < 2.5 < b["hi"] <= 4.0


def test_deep_prefill_checks_equal_scratch_continuations(tmp_path):
    cfg = EvalConfig(model="tiny", probes="random", datasets=("demo",), limit=3, depths=(0, 4, 12),
                     lookahead=5, base_lookahead=6, batch_size=2, out=str(tmp_path))
    res = run_deep_prefill(cfg)
    assert set(res["curves"]) == {"base", "rk", "lp", "base_prob", "rk_prob"}  # both judges
    assert res["split"]["harmful"]["status"].startswith("no trained probe set")
    assert len(res["control_rows"]) == 3 and {r["label"] for r in res["control_rows"]} == {"benign"}
    by_depth = {p["depth"]: p for p in res["curves"]["rk"]}
    assert [by_depth[d]["n"] for d in (0, 4, 12)] == [3, 3, 3]
    assert (tmp_path / "deep_prefill.png").exists() and (tmp_path / "deep_prefill.config.json").exists()
    saved = json.loads((tmp_path / "deep_prefill.json").read_text())
    assert saved["curves"]["rk"][0]["n"] == 3
    # every base / rk lookahead equals a from-scratch greedy decode of prompt + forced[:d] (+ span)
    gm = load_guard_model("tiny")
    from interp.data import load_dataset
    from interp.spans.derive import derive_safety_spans

    spans = derive_safety_spans(gm.tokenizer)
    recs = {r.id: r for r in load_dataset("demo")}
    row = res["rows"][0]
    prompt = format_prompt_ids(gm.tokenizer, recs[row["id"]].prompt)
    from interp.guard.generator import GuardedGenerator
    from interp.guard.types import GuardConfig
    from interp.spans.derive import encode_response

    opener = encode_response(gm.tokenizer, prompt, recs[row["id"]].meta["target"])
    cont = GuardedGenerator(gm.model, gm.tokenizer, spans, GuardConfig(mode="none", max_new_tokens=12)
                            ).generate([prompt], forced=[opener])[0].generated_ids
    assert len(cont) == row["n_tokens"]
    checked = 0
    for c in row["checks"]:
        if c["detector"] == "base":
            ref = hf_greedy_text(gm.model, gm.tokenizer, prompt + cont[: c["depth"]], 6)
        elif c["detector"] == "rk":
            ref = hf_greedy_text(gm.model, gm.tokenizer, prompt + cont[: c["depth"]] + list(spans.span_ids), 5)
        else:
            continue
        assert c["lookahead"] == ref
        checked += 1
    assert checked == 6


def test_deep_prefill_chunked_forcing_equals_stepwise(tmp_path, monkeypatch):
    """The evaluation's rows are the same when forced tokens go one per decode step (the reference path)."""
    import functools

    import interp.evaluate.deep_prefill as dp

    kw = dict(model="tiny", probes="random", datasets=("demo",), limit=3, depths=(0, 3, 9, 20), lookahead=4,
              base_lookahead=4, batch_size=3)  # prefill: openers of different lengths, then free tokens
    fast = run_deep_prefill(EvalConfig(out=str(tmp_path / "fast"), **kw))
    monkeypatch.setattr(dp, "GuardedGenerator", functools.partial(dp.GuardedGenerator, chunk_forced=False))
    slow = run_deep_prefill(EvalConfig(out=str(tmp_path / "slow"), **kw))
    assert sum(len(row["checks"]) for row in fast["rows"]) >= 3 * 3 * 3
    for a, b in zip(fast["rows"], slow["rows"]):
        assert a["n_tokens"] == b["n_tokens"]
        assert [(c["depth"], c["detector"], c["flagged"], c["lookahead"]) for c in a["checks"]] == [
            (c["depth"], c["detector"], c["flagged"], c["lookahead"]) for c in b["checks"]]
        scores = [c["score"] for c in b["checks"] if c["score"] is not None]
        assert len(scores) >= 3
        assert [c["score"] for c in a["checks"] if c["score"] is not None] == pytest.approx(scores, rel=1e-5)


def test_over_refusal_answers_are_the_models_own(tmp_path):
    cfg = EvalConfig(model="tiny", probes="random", datasets=("demo",), limit=2, stride=7, lookahead=4,
                     max_new_tokens=16, out=str(tmp_path))
    res = run_over_refusal(cfg)
    assert res["rates"]["all"]["base"]["n"] == 2
    assert set(res["rates"]["all"]) == {"base", "rk", "lp"}
    gm = load_guard_model("tiny")
    from interp.data import load_dataset

    recs = {r.id: r for r in load_dataset("demo")}
    own = [r for r in res["rows"] if not r["dataset"].endswith("forced opener")]
    ctrl = [r for r in res["rows"] if r["dataset"] == "demo + forced opener"]
    assert len(own) == len(ctrl) == 2 and res["rates"]["all + forced opener"]["lp"]["n"] == 2
    for row in own:
        prompt = format_prompt_ids(gm.tokenizer, recs[row["id"]].prompt)
        assert row["answer"] == hf_greedy_text(gm.model, gm.tokenizer, prompt, 16)
        assert row["rk_checks"] == 3  # depths 7, 14 and the final check at 16
    for row in ctrl:  # the control arm: the record's forced opener, then the model's own greedy text
        prompt = format_prompt_ids(gm.tokenizer, recs[row["id"]].prompt)
        opener = encode_response(gm.tokenizer, prompt, recs[row["id"]].meta["target"])
        forced = opener[:16]  # the forced opener counts towards max_new_tokens
        rest = hf_greedy_text(gm.model, gm.tokenizer, prompt + forced, 16 - len(forced)) if len(forced) < 16 else ""
        assert row["answer"] == gm.tokenizer.decode(forced, skip_special_tokens=True) + rest
    assert (tmp_path / "over_refusal.png").exists()


def test_cli_evaluate_cost_writes_ratios(tmp_path, capsys):
    rc = main(["evaluate", "cost", "--model", "tiny", "--contexts", "32", "--strides", "5",
               "--max-new-tokens", "12", "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "cost.json").read_text())
    lat = data["latency"][0]
    assert lat["context_len"] == 32 and lat["check_ms"] > 0 and lat["decode_ms"] > 0
    assert [(r["piggyback"], r["early_exit"]) for r in data["slowdown"]] == [(False, False), (True, False),
                                                                             (False, True)]
    lo, med, hi = lat["decode_spread_ms"]
    assert lo <= med == lat["decode_ms"] <= hi
    for row in data["slowdown"]:
        # stride 5 over 12 tokens (unless the model stops early): a check at 5 and 10, none at the end
        assert row["checks"] == row["tokens"] // 5
        assert row["slowdown_spread"][0] <= row["slowdown_spread"][2]
        if row["piggyback"]:
            assert row["predicted_slowdown"] is None
        else:
            assert row["predicted_slowdown"] == pytest.approx(row["checks"] * row["check_ms"] / (1e3 * row["unguarded_s"]))
            assert row["check_ms"] > 0
    assert "wrote" in capsys.readouterr().out


def test_cli_guard_bad_input(capsys):
    assert main(["guard", "--model", "tiny", "--mode", "rk", "--prompt", "  "]) == 2
    assert main(["guard", "--model", "tiny", "--mode", "lp", "--prompt", "hi"]) == 2
    assert main(["guard", "--model", "tiny", "--mode", "rk", "--prompt", "hi", "--stride", "0"]) == 2
    assert "stride" in capsys.readouterr().err


def test_cli_guard_streams(capsys):
    assert main(["guard", "--model", "tiny", "--mode", "rk", "--prompt", "Hi", "--stride", "4",
                 "--max-new-tokens", "8", "--lookahead", "3"]) == 0
    err = capsys.readouterr().err
    assert "[rk check @4" in err and "[rk check @8" in err


def test_over_refusal_control_arm_continues_after_the_forced_opener(tmp_path):
    cfg = EvalConfig(model="tiny", probes="random", datasets=("demo",), limit=2, stride=25, lookahead=4,
                     max_new_tokens=64, out=str(tmp_path))
    res = run_over_refusal(cfg)
    gm = load_guard_model("tiny")
    from interp.data import load_dataset

    recs = {r.id: r for r in load_dataset("demo")}
    ctrl = [r for r in res["rows"] if r["dataset"] == "demo + forced opener"]
    assert len(ctrl) == 2
    for row in ctrl:
        prompt = format_prompt_ids(gm.tokenizer, recs[row["id"]].prompt)
        opener = encode_response(gm.tokenizer, prompt, recs[row["id"]].meta["target"])
        assert len(opener) < 64  # the model writes the rest
        rest = hf_greedy_text(gm.model, gm.tokenizer, prompt + opener, 64 - len(opener))
        assert row["answer"] == gm.tokenizer.decode(opener, skip_special_tokens=True) + rest


def test_attacks_record_the_split(tmp_path):
    from interp.data.fetch import mirror_dir

    mirror = mirror_dir()
    if mirror is None or not (mirror / "jbb_artifacts").is_dir():
        pytest.skip("no jbb_artifacts in the dataset mirror (ANYDEPTH_DATA)")
    from interp.evaluate.attacks import run_attacks

    cfg = EvalConfig(model="tiny", probes="random", datasets=("jbb_artifacts",), limit=2, stride=4, lookahead=2,
                     max_new_tokens=8, out=str(tmp_path))
    res = run_attacks(cfg)
    assert res["split"]["n_eval"] == len(res["rows"]) and res["split"]["excluded"] == 0
    assert "no trained probe set" in res["split"]["status"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A probe set trained under the protocol on the tiny model (half of the built-in demo pairs), so that the
    evaluations below exercise the exclusion of its training and calibration prompts."""
    from interp.extract.packed import extract_to_store
    from interp.extract.store import ActivationStore
    from interp.generate.continuations import GenerateConfig, continuations_for
    from interp.notebook_utils import demo_pairs
    from interp.probes.oof import ProbeConfig
    from interp.probes.train import TrainConfig, save_probeset, train_probeset
    from interp.spans.derive import derive_safety_spans

    work = tmp_path_factory.mktemp("trained")
    gm = load_guard_model("tiny")
    records = demo_pairs(24, seed=1)
    items = continuations_for(gm.model, gm.tokenizer, records, GenerateConfig(mode="matched", max_new_tokens=16),
                              progress=False)
    extract_to_store(gm.model, gm.tokenizer, items, work / "s.h5", spans=derive_safety_spans(gm.tokenizer),
                     depths="0:16:4", layers=[1, 2], provenance=gm.provenance, progress=False, answer_length=16)
    cfg = TrainConfig(store=str(work / "s.h5"), out=str(work / "p"), stride=4, folds=3, n_boot=20, target_fpr=0.2)
    with ActivationStore.open(work / "s.h5") as store:
        probes = train_probeset(store, cfg, ProbeConfig(), progress=False)
    save_probeset(probes, cfg, ProbeConfig(), work / "p")
    return work / "p", probes, records


def test_evaluations_with_a_trained_probe_set_exclude_what_it_saw(trained, tmp_path):
    from interp.data import load_dataset
    from interp.probes.protocol import seen_in

    path, probes, records = trained
    seen = seen_in(probes.split)
    demo = {r.id: r for r in load_dataset("demo")}
    dp = run_deep_prefill(EvalConfig(model="tiny", probes=str(path), datasets=("demo",), limit=40, depths=(0, 4, 12),
                                     lookahead=3, base_lookahead=3, batch_size=8, out=str(tmp_path / "dp")))
    split = dp["split"]["harmful"]
    assert split["in_sample"] is False and split["excluded"] > 0 and split["n_eval"] == len(dp["rows"])
    for row in dp["rows"] + dp["control_rows"]:
        r = demo[row["id"]]
        assert seen.why(r.prompt, r.meta.get("pair_id")) is None  # neither the prompt nor its twin was seen
    for points in dp["curves"].values():  # every evaluated prompt counts at every depth
        assert all(p["n"] == len(dp["rows"]) for p in points)
    assert dp["lp_threshold"] == pytest.approx(probes.threshold)
    orf = run_over_refusal(EvalConfig(model="tiny", probes=str(path), datasets=("demo",), limit=40, stride=4,
                                      lookahead=3, out=str(tmp_path / "or")))
    assert orf["guard_config"]["max_new_tokens"] == 16  # the answer length the threshold was calibrated at
    assert orf["split"]["excluded"] > 0 and orf["split"]["in_sample"] is False
    assert all(seen.why(demo[r["id"]].prompt, demo[r["id"]].meta.get("pair_id")) is None for r in orf["rows"])
