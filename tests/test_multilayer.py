"""Multi-layer probes (the mean of several layers' probe logits): the ProbeSet format, training with a per-answer
threshold on the combined score, the guard reading every layer (early exit at the deepest), and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp import UserError
from interp.cli.main import main
from interp.extract.store import ActivationStore
from interp.probes.probeset import ProbeSet
from interp.probes.synthetic import LAYERED, write_layered_store

LAYERS = LAYERED["layers"]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    """A synthetic store (signal grows with the layer) written through ActivationStore, float32."""
    return write_layered_store(tmp_path_factory.mktemp("store") / "s.h5")


def test_train_a_multi_layer_probe_calibrated_per_answer(store_path, tmp_path):
    """The saved probes' combined score, recomputed on the stored activations (grid and end slots) on the guard's
    checks, reproduces the calibration threshold and the held-out per-answer rates the probe set reports."""
    from interp.probes.answers import Deployed, answer_scores
    from interp.probes.calibration import fires
    from interp.probes.data import examples_meta
    from interp.probes.protocol import Schedule, per_answer_threshold

    out = tmp_path / "p"
    assert main(["train", "--store", str(store_path), "--out", str(out), "--folds", "3", "--n-boot", "0",
                 "--stride", "10", "--combine-layers", "1", "2", "--aggregate", "k_of_n", "--k-of-n", "2",
                 "--window", "3", "--target-fpr", "0.1"]) == 0
    with ActivationStore.open(store_path) as store:
        ps = ProbeSet.load(out, expect_provenance=store.provenance)
        states = {layer: store.read(ps.hook, layer, position="probe") for layer in LAYERS}
        ends = {layer: store.read_end(ps.hook, layer, position="probe") for layer in LAYERS}
        meta, depths = examples_meta(store), list(store.depths)
    assert ps.combine == [1, 2] and ps.readout == [1, 2]
    assert ps.metrics["readout"] == {"layers": [1, 2], "rule": "mean of the layers' probe logits", "stacked": False}
    sched = Schedule.from_dict(ps.schedule)
    assert sched.rule.describe() == "2 of the last 3 checks" and ps.thresholds["aggregate"]["k"] == 2
    assert sched.answer_length == int(meta["n_tokens"].max())  # the store's answer length
    scores = np.where(meta["valid"], ps.combined_score(states), np.nan)
    ans = answer_scores(scores, depths, Deployed.of(meta, sched.answer_length), sched, ps.combined_score(ends))
    assert not ans.excluded.any() and (ans.n_checks > 0).all()  # every answer, every check scored
    roles = {r: np.isin(meta["groups"], ps.split[r]["groups"]) for r in ("calibration", "test")}
    cal = roles["calibration"] & (meta["y"] == 0)
    cal_info = ps.thresholds["calibration"]
    assert cal_info["n_answers"] == int(cal.sum()) > 0
    assert cal_info["resolved"] and abs(per_answer_threshold(ans.score[cal], 0.1)["threshold"] - ps.threshold) < 1e-6
    pa = ps.metrics["test"]["per_answer"]
    assert pa["schedule"]["aggregate"]["kind"] == "k_of_n"
    for lab, key in ((1, "tpr"), (0, "fpr")):
        held = roles["test"] & (meta["y"] == lab)
        assert pa[key]["n"] == int(held.sum()) and pa[key]["k"] == int(fires(ans.score[held], ps.threshold).sum())
    # the threshold-free per-answer AUROC: every test answer (all are own answers here), the guard's statistic
    from sklearn.metrics import roc_auc_score

    held = roles["test"]
    stat = np.where(np.isneginf(ans.score), -1e9, ans.score)[held]  # -inf: an answer that can never fire
    assert pa["auroc_own_vs_harmful"]["n_answers"] == int(held.sum())
    assert abs(pa["auroc_own_vs_harmful"]["value"] - roc_auc_score(meta["y"][held], stat)) < 1e-9


def test_combine_top_takes_the_best_layers_by_training_cv(store_path, tmp_path):
    """--combine-top K combines the K layers with the best CV AUROC on the training prompts (here the signal grows
    with the layer, so 1 and 2), and the held-out test numbers carry per-depth CIs, TPRs and per-source rates."""
    out = tmp_path / "p"
    assert main(["train", "--store", str(store_path), "--out", str(out), "--folds", "3", "--n-boot", "50",
                 "--stride", "10", "--combine-top", "2", "--target-fpr", "0.1"]) == 0
    ps = ProbeSet.load(out)
    cv = {int(k): v["auroc"]["value"] for k, v in ps.metrics["cv_train"].items()}
    assert ps.combine == sorted(sorted(cv, key=lambda k: -cv[k])[:2]) == [1, 2]
    assert "top 2 layers combined" in ps.metrics["selected_by"]
    test = ps.metrics["test"]
    row = next(r for r in test["per_depth"]["probe"] if r["n"])
    assert row["auroc_ci"]["lo"] <= row["auroc"] <= row["auroc_ci"]["hi"]
    assert 0 <= row["tpr_at_threshold"]["rate"] <= 1 and row["tpr_at_threshold"]["n"] > 0
    assert "auroc_ci" not in test["per_depth"]["last_token"][0]  # CIs only where the targets table reads them
    by_src = test["per_answer"]["fpr_by_source"]
    assert sum(v["n"] for v in by_src.values()) == test["per_answer"]["fpr"]["n"]


@pytest.mark.parametrize("extra, message", [
    (["--combine-top", "1"], "--combine-top needs 2 or more layers"),
    (["--combine-top", "2", "--layer", "1"], "--combine-top excludes --combine-layers and --layer"),
    (["--combine-top", "4"], "--combine-top 4 exceeds the 3 fitted layers"),
    (["--combine-layers", "1", "7"], "--combine-layers 7: the store has no layer 7 (it holds [0, 1, 2])"),
    (["--combine-layers", "2"], "--combine-layers needs two or more layers"),
    (["--layers", "0", "1", "--combine-layers", "1", "2"], "--combine-layers 2 is not among the fitted --layers"),
    (["--combine-layers", "1", "2", "--calib-fraction", "0"], "needs a calibration split"),
])
def test_multi_layer_bad_input_is_one_line(store_path, tmp_path, capsys, extra, message):
    assert main(["train", "--store", str(store_path), "--out", str(tmp_path / "p"), "--folds", "3", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p").exists()


def test_probeset_round_trip_keeps_the_combination(tmp_path):
    rng = np.random.default_rng(1)
    ps = ProbeSet(layers=[0, 1, 2], weights=rng.normal(size=(3, 8)), bias=rng.normal(size=3), hook="hook_resid_post",
                  position="probe", best_layer=1, threshold=0.3, mean=rng.normal(size=(3, 8)),
                  std=rng.uniform(0.5, 2, size=(3, 8)), combine=[2, 0])
    back = ProbeSet.load(ps.save(tmp_path / "p"))
    assert back.combine == [0, 2] and back.readout == [0, 2] and back.threshold == 0.3
    states = {layer: rng.normal(size=(5, 8)).astype(np.float32) for layer in range(3)}
    want = 1 / (1 + np.exp(-(ps.logit(states[0], 0) + ps.logit(states[2], 2)) / 2))
    np.testing.assert_allclose(back.combined_score(states), want, rtol=0, atol=1e-12)
    torch_states = {k: torch.from_numpy(v) for k, v in states.items()}
    np.testing.assert_allclose(back.combined_score(torch_states).numpy(), want, rtol=0, atol=1e-6)
    single = ProbeSet.load(ProbeSet(**{**ps.__dict__, "combine": []}).save(tmp_path / "q"))
    assert single.readout == [1]
    np.testing.assert_array_equal(single.combined_score(states), single.score(states[1]))
    with pytest.raises(UserError, match=r"names layers \[5\] that the probe set has no probe for"):
        ProbeSet(layers=[0, 1], weights=np.zeros((2, 8)), bias=np.zeros(2), hook="hook_resid_post",
                 position="probe", best_layer=0, combine=[0, 5])
    with pytest.raises(UserError, match=r"no activations given for \[2\]"):
        back.combined_score({0: states[0]})


@pytest.mark.parametrize("way", ["plain", "early_exit", "piggyback"])
def test_guard_check_equals_the_offline_score_from_stored_activations(tmp_path, way):
    """A probe averaging layers 0 and 2 of a 4-layer model: the guard's check score at each depth equals the
    saved probe's combined score on the stored float32 activations (also riding on the decode step); with early
    exit a check stops after layer 2."""
    from interp.extract.packed import extract_to_store
    from interp.generate.continuations import Continuation
    from interp.guard.generator import GuardedGenerator
    from interp.guard.types import GuardConfig
    from interp.model import hooks as mh
    from interp.spans.derive import derive_safety_spans, format_prompt_ids
    from interp.testing import tiny_model

    model, tok = tiny_model("llama", n_layers=4)
    spans = derive_safety_spans(tok)
    rng = np.random.default_rng(2)
    prompt_ids = format_prompt_ids(tok, "How do I bake bread?")
    response = [int(x) for x in rng.integers(10, 380, size=12)]
    depths = [0, 4, 8, 12]
    item = Continuation(id="r0", prompt="How do I bake bread?", label="benign", prompt_ids=prompt_ids,
                        response_ids=response, source="test")
    path = tmp_path / "s.h5"
    extract_to_store(model, tok, [item], path, spans=spans, depths=depths, layers=[0, 1, 2, 3],
                     storage_dtype="float32", progress=False)
    d = model.config.hidden_size
    with ActivationStore.open(path) as store:
        states = {layer: store.read("hook_resid_post", layer, position="probe")[0] for layer in range(4)}
    scale = np.mean([np.linalg.norm(v, axis=-1).mean() for v in states.values()])
    ps = ProbeSet(layers=[0, 1, 2, 3], weights=rng.normal(size=(4, d)) * 2 / scale, bias=np.zeros(4),
                  hook="hook_resid_post", position="probe", best_layer=3, threshold=0.5, combine=[0, 2],
                  provenance={"template_hash": spans.template_hash, "span_ids": list(spans.span_ids)})
    ps = ProbeSet.load(ps.save(tmp_path / "p"))
    ps.threshold = 2.0  # in memory only (a saved set is refused with it): never halts, so every check is scored
    offline = ps.combined_score(states)  # [D]
    assert 0.02 < offline.min() and offline.max() < 0.98  # not saturated: the comparison means something
    ran = []
    hooks = [mh.register(model, mh.resid_post(layer), lambda h, layer=layer: ran.append(layer)) for layer in range(4)]
    early_exit = way == "early_exit"
    cfg = GuardConfig(mode="lp", stride=4, check_at_start=True, final_check=False, max_new_tokens=16,
                      early_exit=early_exit, piggyback=way == "piggyback")
    try:  # token by token for piggyback: a forced stretch fed in one forward cannot carry the span
        with GuardedGenerator(model, tok, spans, cfg, ps, chunk_forced=way != "piggyback") as gen:
            assert gen.checker.layers == [0, 2] and gen.checker.layer == 2
            ran.clear()
            res = gen.generate([prompt_ids], forced=[response], forced_only=True)[0]
    finally:
        for h in hooks:
            h.remove()
    assert [c.depth for c in res.checks] == depths and not res.halted
    np.testing.assert_allclose([c.score for c in res.checks], offline, rtol=0, atol=2e-6)
    # the forced stretches run every layer; with early exit each of the 4 checks stops after layer 2
    assert ran.count(0) == ran.count(2) and ran.count(2) - ran.count(3) == (len(depths) if early_exit else 0)
    if way == "piggyback":  # prompt + one forward per token; only the last check (no step after it) runs alone
        assert ran.count(0) == 1 + len(response) + 1


def test_guard_refuses_a_multi_layer_probe_outside_the_model():
    from interp.guard.generator import GuardedGenerator
    from interp.guard.types import GuardConfig
    from interp.spans.derive import derive_safety_spans
    from interp.testing import tiny_model

    model, tok = tiny_model("qwen2", n_layers=2)
    spans = derive_safety_spans(tok)
    d = model.config.hidden_size
    ps = ProbeSet(layers=[0, 1, 5], weights=np.zeros((3, d)), bias=np.zeros(3), hook="hook_resid_post",
                  position="probe", best_layer=0, combine=[0, 5],
                  provenance={"template_hash": spans.template_hash, "span_ids": list(spans.span_ids)})
    with pytest.raises(UserError, match=r"probe layer 5 is outside the model's 2 layers"):
        GuardedGenerator(model, tok, spans, GuardConfig(mode="lp"), ps)
