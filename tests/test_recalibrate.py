"""Recalibrating a probe set's threshold on more own answers (``anydepth calibrate``): the same store reproduces
the trained threshold and held-out numbers; new answers join calibration or test by their prompt, never by their
row; the rates match a direct recomputation; the saved set excludes its new calibration prompts; bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from interp import UserError
from interp.cli.main import main
from interp.extract.store import ActivationStore
from interp.probes.probeset import ProbeSet
from interp.probes.recalibrate import RecalibrateConfig, Recalibration, recalibrate
from interp.probes.synthetic import LAYERED, SyntheticSet, SyntheticSpec, write_layered_store, write_store

TRAIN = ["--folds", "3", "--n-boot", "0", "--stride", "10", "--combine-layers", "1", "2", "--target-fpr", "0.1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The layered synthetic store and a two-layer probe set trained on it (threshold at 10% per answer)."""
    root = tmp_path_factory.mktemp("recal")
    store = write_layered_store(root / "s.h5")
    assert main(["train", "--store", str(store), "--out", str(root / "p"), *TRAIN]) == 0
    return store, root / "p"


def _more_answers(path, trained_prompts: list[str], *, n_prompts: int = 120, seed: int = 11, extra=None, **prov):
    """A second store of the same (synthetic) model: ``n_prompts`` answers, the first ones to ``trained_prompts``
    (prompts the first store holds), the rest to new prompts; ``prov`` overrides its provenance."""
    ss = SyntheticSet(SyntheticSpec(n_prompts=n_prompts, n_depths=4, d_model=16, n_layers=3, signal=(0.5, 1.5, 2.5),
                                    margin_noise=0.5, invalid_frac=0.25, n_sources=2, seed=seed))
    prompts = [*trained_prompts, *(f"new prompt {i}" for i in range(n_prompts - len(trained_prompts)))]
    path = write_store(ss, path, LAYERED["layers"], LAYERED["span_len"], LAYERED["probe_index"],
                       extra_examples={"prompt": prompts, "source": ["fresh"] * n_prompts, **(extra or {})})
    if prov:
        import h5py

        from interp.extract.h5io import encode_attr

        with h5py.File(path, "a") as f:
            for key, value in prov.items():
                f.attrs[key] = encode_attr(value)
    return path, ss


def _direct_scores(ps: ProbeSet, path) -> tuple[np.ndarray, dict]:
    """The slow obvious path: the saved probes' combined score on every stored vector, each answer's checks
    listed by hand (every stride multiple up to its end, then the end slot), the answer's maximum."""
    from interp.probes.data import examples_meta

    with ActivationStore.open(path) as store:
        states = {layer: store.read(ps.hook, layer, position="probe") for layer in ps.readout}
        ends = {layer: store.read_end(ps.hook, layer, position="probe") for layer in ps.readout}
        meta, depths = examples_meta(store), [int(d) for d in store.depths]
    grid, end = ps.combined_score(states), ps.combined_score(ends)
    stride = ps.schedule["stride"]
    out = np.empty(len(grid))
    for i, n in enumerate(meta["n_tokens"]):
        checks = [grid[i, depths.index(d)] for d in range(stride, n + 1, stride)]
        out[i] = max([*checks, end[i]])  # every answer here ends off the stride grid: its final check is its end
    return out, meta


def test_the_probe_sets_own_store_reproduces_its_threshold_and_held_out_numbers(trained):
    store, probes = trained
    ps = ProbeSet.load(probes)
    r = recalibrate(probes, [store], RecalibrateConfig(target_fpr=0.1, n_boot=0))
    # the same answers set it: equal up to the float32 the saved weights are stored in (the fit was in float64)
    assert r.threshold == pytest.approx(ps.threshold, abs=1e-6) and r.previous_threshold == ps.threshold
    cal = ps.thresholds["calibration"]
    assert r.calibration["n_answers"] == cal["n_answers"] and r.calibration["fpr_new_answers"] == cal["fpr_new_answers"]
    counts = r.roles["total"]
    assert counts["excluded"] == ps.split["train"]["n_rows"] and counts["test"] == ps.split["test"]["n_rows"]
    assert counts["new_calibration"] == counts["new_test"] == 0
    held = ps.metrics["test"]["per_answer"]
    for key in ("tpr", "fpr"):
        assert (r.test[key]["k"], r.test[key]["n"]) == (held[key]["k"], held[key]["n"])
        assert r.test_previous[key]["k"] == held[key]["k"]


def test_new_answers_join_by_prompt_and_every_rate_matches_a_direct_recomputation(trained, tmp_path):
    from interp.probes.calibration import fires
    from interp.probes.data import examples_meta
    from interp.probes.protocol import per_answer_threshold

    store, probes = trained
    ps = ProbeSet.load(probes)
    with ActivationStore.open(store) as s:
        meta0 = examples_meta(s)
    role0 = {p: r for r in ("train", "calibration", "test") for p in meta0["prompts"]
             if meta0["groups"][list(meta0["prompts"]).index(p)] in ps.split[r]["groups"]}
    reused = list(meta0["prompts"][:30])  # answered again in the second store: keep their roles
    more, _ = _more_answers(tmp_path / "more.h5", reused)
    r = recalibrate(probes, [store, more], RecalibrateConfig(target_fpr=0.05, test_fraction=0.5, seed=3, n_boot=0))

    s0, m0 = _direct_scores(ps, store)
    s1, m1 = _direct_scores(ps, more)
    role1 = np.array([{"train": "excluded"}.get(role0.get(p), role0.get(p, "")) for p in m1["prompts"]], object)
    new = role1 == ""
    assert r.roles["total"]["new_calibration"] + r.roles["total"]["new_test"] == int(new.sum()) == 90
    assert abs(r.roles["total"]["new_test"] - 45) <= 4  # half of the new groups, stratified by label
    # the new groups' roles, as the saved split records them; the reused prompts keep the first store's
    from interp.probes.groups import prompt_key

    new_cal = set(r.probes.split["calibration"]["prompt_keys"]) - set(ps.split["calibration"]["prompt_keys"])
    key1 = np.array([prompt_key(p) for p in m1["prompts"]])
    cal1 = (role1 == "calibration") | (new & np.isin(key1, list(new_cal)))
    cal0 = np.isin(m0["groups"], ps.split["calibration"]["groups"])
    assert r.roles[str(more)]["calibration"] == int(cal1.sum())
    assert r.calibration["by_store"] == {"0": int((cal0 & (m0["y"] == 0)).sum()), "1": int((cal1 & (m1["y"] == 0)).sum())}
    # the threshold is the 5% per-answer threshold over exactly the benign calibration answers' scores
    expected = per_answer_threshold(np.concatenate([s0[cal0 & (m0["y"] == 0)], s1[cal1 & (m1["y"] == 0)]]), 0.05)
    assert r.threshold == pytest.approx(expected["threshold"], abs=1e-12) and r.threshold != ps.threshold
    # held-out rates at the new threshold, over the first store's test answers and the second's test prompts
    test1 = (role1 == "test") | (new & ~cal1)
    test0 = np.isin(m0["groups"], ps.split["test"]["groups"])
    y = np.concatenate([m0["y"][test0], m1["y"][test1]])
    fired = fires(np.concatenate([s0[test0], s1[test1]]), r.threshold)
    assert (r.test["tpr"]["k"], r.test["tpr"]["n"]) == (int(fired[y == 1].sum()), int((y == 1).sum()))
    assert (r.test["fpr"]["k"], r.test["fpr"]["n"]) == (int(fired[y == 0].sum()), int((y == 0).sum()))


def test_the_saved_set_carries_the_new_threshold_and_excludes_its_new_calibration_prompts(trained, tmp_path):
    store, probes = trained
    more, _ = _more_answers(tmp_path / "more.h5", [])
    out = tmp_path / "recal"
    assert main(["calibrate", "--probeset", str(probes), "--stores", str(store), str(more), "--target-fpr", "0.05",
                 "--n-boot", "0", "--out", str(out)]) == 0
    ps, new = ProbeSet.load(probes), ProbeSet.load(out)
    saved = json.loads((out / "recalibration.json").read_text())
    assert new.threshold == saved["threshold"] and new.thresholds["recalibrated_from"]["threshold"] == ps.threshold
    assert new.thresholds["calibration"]["n_answers"] > ps.thresholds["calibration"]["n_answers"]
    seen = new.seen()  # evaluations now exclude the new calibration prompts, not the new test prompts
    n_new = saved["roles"]["total"]["new_calibration"]
    assert sum(f"new prompt {i}" in seen for i in range(120)) == n_new > 0
    assert (out / "recalibration.md").read_text() == Recalibration.from_json(saved).summary() + "\n"
    assert saved["calibration"]["by_store"]["1"] > 0 and "false alarms at the new threshold by source: " in \
        (out / "recalibration.md").read_text()
    assert "tpr_at_threshold" not in json.dumps(new.metrics["test"]["per_depth"])
    assert new.metrics["test"]["per_answer"]["tpr"] == saved["test"]["tpr"]
    assert json.loads((out / "config.json").read_text())["stores"] == [str(store), str(more)]


@pytest.mark.parametrize("prov, message", [({"weights_sha256": "other"}, "weights_sha256"),
                                           ({"answer_length": 999}, "answer-length 999"),
                                           ({"template_hash": "t1"}, "template_hash")])
def test_a_store_of_another_model_template_or_length_is_refused_and_nothing_is_written(trained, tmp_path, prov,
                                                                                        message):
    store, probes = trained
    other, _ = _more_answers(tmp_path / "other.h5", [], **prov)
    with pytest.raises(UserError, match=message):
        recalibrate(probes, [store, other], RecalibrateConfig(), out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_input_gets_one_line_errors(trained, tmp_path):
    store, probes = trained
    for cfg, message in ((RecalibrateConfig(target_fpr=0), "target-fpr"),
                         (RecalibrateConfig(test_fraction=1), "test-fraction")):
        with pytest.raises(UserError, match=message):
            recalibrate(probes, [store], cfg)
    with pytest.raises(UserError, match="--stores"):
        recalibrate(probes, [], RecalibrateConfig())
    import shutil

    copy = shutil.copy(store, tmp_path / "copy.h5")
    for twice in ([store, store], [store, copy]):
        with pytest.raises(UserError, match="give each store once"):
            recalibrate(probes, twice, RecalibrateConfig())
    bare = ProbeSet.load(probes)
    bare.split = {}
    with pytest.raises(UserError, match="records no split"):
        recalibrate(bare, [store], RecalibrateConfig())
    unscheduled = ProbeSet.load(probes)
    unscheduled.schedule = {}
    with pytest.raises(UserError, match="records no guard schedule"):
        recalibrate(unscheduled, [store], RecalibrateConfig())
    ps = ProbeSet.load(probes)
    ps.combine = [0, 1, 2]  # reads a layer the store below lacks
    with ActivationStore.open(store) as s:
        layers = list(s.layers)
    assert layers == [0, 1, 2]
    thin = write_store(SyntheticSet(SyntheticSpec(n_prompts=40, n_depths=4, d_model=16, n_layers=3, seed=1)),
                       tmp_path / "thin.h5", [1, 2], LAYERED["span_len"], LAYERED["probe_index"])
    with pytest.raises(UserError, match="re-extract with --layers 0,1,2"):
        recalibrate(ps, [thin], RecalibrateConfig())


def test_an_answer_given_twice_counts_once(trained, tmp_path):
    """A second copy of the same answers under other ids (a pool built again from the same spec) is left out as
    repeats: the threshold and every rate are those without it."""
    from interp.probes.recalibrate import repeated_answers

    assert repeated_answers(np.array(["a", "A ", "a", "b"]), np.array(["x", "x", "y", ""], object)).tolist() == \
        [False, True, False, False]  # the same prompt (normalised) and text; no text is never a repeat
    store, probes = trained
    text = {"response": [f"answer {i}" for i in range(120)], "response_chars": np.tile([0, 10, 20, 30], (120, 1))}
    more, _ = _more_answers(tmp_path / "more.h5", [], extra=text)
    again, _ = _more_answers(tmp_path / "again.h5", [], extra=text | {"id": [f"x{i}" for i in range(120)]})
    cfg = RecalibrateConfig(target_fpr=0.05, n_boot=0)
    once, twice = recalibrate(probes, [store, more], cfg), recalibrate(probes, [store, more, again], cfg)
    assert twice.roles[str(again)]["repeated"] == twice.roles[str(again)]["excluded"] == 120
    assert twice.roles[str(more)]["repeated"] == 0 and twice.threshold == once.threshold
    assert twice.test["tpr"] == once.test["tpr"] and twice.test["fpr"] == once.test["fpr"]
    assert "120 repeat an earlier answer" in twice.summary()
