"""`anydepth levers`: each recipe lever fitted on the same split as `train`, its rows and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from interp import UserError
from interp.cli.main import main
from interp.formatting import rate
from interp.probes.levers import LeverConfig, LeverResult, resolve_lever
from interp.probes.synthetic import write_layered_store

COMMON = ["--folds", "3", "--n-boot", "50", "--stride", "10", "--target-fpr", "0.1"]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return write_layered_store(tmp_path_factory.mktemp("store") / "s.h5", n_sources=3)


def test_levers_merge_and_conflicts_are_named():
    changes, train, probe = resolve_lever("stack3+balance+ema")
    assert train == {"combine_top": 3, "stack": True, "aggregate": "ema", "ema_alpha": 0.5}
    assert probe == {"balance_sources": True} and changes.count(";") == 2
    assert resolve_lever("hardneg10+balance")[2] == {"hard_negative_weight": 10.0, "balance_sources": True}
    with pytest.raises(UserError, match="mean3 sets combine_top=3 where another lever set 5"):
        resolve_lever("stack5+mean3")
    with pytest.raises(UserError, match="unknown lever 'deep'; levers: base, ln1"):
        resolve_lever("base+deep")


def test_each_lever_row_is_the_probe_set_train_fits_with_that_lever(store_path, tmp_path):
    """The base row and the stacked row carry exactly the threshold and held-out rates `train` saves for the same
    options; the stacked readout gets a leave-one-source-out row, a mean of probes a note; JSON round trip."""
    from interp.probes.probeset import ProbeSet

    out = tmp_path / "levers"
    assert main(["levers", "--store", str(store_path), "--out", str(out), "--levers", "base", "stack3", "mean3",
                 *COMMON]) == 0
    res = LeverResult.load(out / "levers.json")
    assert [r.lever for r in res.rows] == ["base", "stack3", "mean3"] and (out / "levers.md").exists()
    assert (out / "levers.png").stat().st_size > 0
    for lever, extra in (("base", []), ("stack3", ["--combine-top", "3", "--stack", "true"])):
        assert main(["train", "--store", str(store_path), "--out", str(tmp_path / lever), *COMMON, *extra]) == 0
        ps, row = ProbeSet.load(tmp_path / lever), res.row(lever)
        assert row.threshold == ps.threshold and row.readout["layers"] == ps.readout
        assert row.test_tpr == ps.metrics["test"]["per_answer"]["tpr"]
        assert row.test_fpr == ps.metrics["test"]["per_answer"]["fpr"]
        assert row.calibration_tpr == ps.thresholds["calibration"]["tpr_harmful"]
        assert row.test_answer_auroc == ps.metrics["test"]["per_answer"]["auroc_own_vs_harmful"] is not None
    stacked = res.row("stack3")
    assert stacked.readout["stacked"] and stacked.loso["n_sources"] == 0  # no text: no n-gram calls
    assert 0.5 < stacked.loso["macro"]["value"] <= 1 and len(stacked.loso["rows"]) == 3
    assert "not computed for a mean" in res.row("mean3").loso["note"]
    assert "| stack3 | resid_post L0,1,2 stacked |" in res.summary()


def test_calibration_tpr_counts_the_calibration_prompts_harmful_answers(store_path, tmp_path):
    from interp.extract.store import ActivationStore
    from interp.probes.data import examples_meta
    from interp.probes.probeset import ProbeSet

    assert main(["train", "--store", str(store_path), "--out", str(tmp_path / "p"), *COMMON]) == 0
    ps = ProbeSet.load(tmp_path / "p")
    with ActivationStore.open(store_path) as store:
        meta = examples_meta(store)
    cal_harmful = np.isin(meta["groups"], ps.split["calibration"]["groups"]) & (meta["y"] == 1)
    cal = ps.thresholds["calibration"]
    assert cal["tpr_harmful"]["n"] == int(cal_harmful.sum()) > 0
    by_kind = cal["tpr_harmful_by_kind"]  # the same answers, split by kind
    assert sum(v["n"] for v in by_kind.values()) == cal["tpr_harmful"]["n"]
    assert sum(v["k"] for v in by_kind.values()) == cal["tpr_harmful"]["k"]
    assert {k: v["n"] for k, v in by_kind.items()} == {
        str(k): int((cal_harmful & (meta["kinds"] == k)).sum()) for k in np.unique(meta["kinds"][cal_harmful])}
    test_harmful = np.isin(meta["groups"], ps.split["test"]["groups"]) & (meta["y"] == 1)
    held = ps.held_out  # the test prompts' harmful answers by kind, printed by `anydepth train`
    assert sum(v["n"] for v in held.tpr_by_kind.values()) == held.tpr["n"] == int(test_harmful.sum())
    assert all(f"; {k} {rate(v)}" in ps.summary() for k, v in held.tpr_by_kind.items())
    b = cal["fpr_new_answers"]  # what the threshold promises for new answers, printed beside it
    assert b["expected"] <= b["upper"] and f"at most {b['expected']:.1%} on average and {b['upper']:.1%}" in ps.summary()
    cal_benign = np.isin(meta["groups"], ps.split["calibration"]["groups"]) & (meta["y"] == 0) \
        & np.isin(meta["kinds"], ps.thresholds["calibrate_on"])
    assert cal["fpr_new_prompts"]["n_prompts"] == len(np.unique(meta["groups"][cal_benign]))
    assert f"over {cal['fpr_new_prompts']['n_prompts']} calibration prompts" in ps.summary()


@pytest.mark.parametrize("levers, message", [
    (["base", "ln1"], "lever 'ln1' reads hook ln1.hook_normalized, which the store lacks"),
    (["base", "stack5"], "lever 'stack5': --combine-top 5 exceeds the 3 fitted layers"),
    (["nope"], "unknown lever 'nope'"),
    (["base", "userheader"], "lever 'userheader' reads user_header, which the store lacks; re-extract it with "
                             "--controls true"),
])
def test_bad_levers_are_one_line_and_write_nothing(store_path, tmp_path, capsys, levers, message):
    out = tmp_path / "levers"
    assert main(["levers", "--store", str(store_path), "--out", str(out), "--levers", *levers, *COMMON]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not out.exists()
    assert "lever/s" not in err  # refused before the first lever is fitted (no progress bar)


def test_lever_config_refuses_an_empty_list():
    with pytest.raises(UserError, match="--levers needs at least one lever"):
        LeverConfig(levers=[]).validate()


def test_a_fixed_threshold_is_kept_and_its_calibration_false_alarms_reported(store_path, tmp_path):
    from interp.probes.probeset import ProbeSet

    assert main(["train", "--store", str(store_path), "--out", str(tmp_path / "p"), *COMMON,
                 "--fixed-threshold", "0.5"]) == 0
    ps = ProbeSet.load(tmp_path / "p")
    cal = ps.thresholds["calibration"]
    assert ps.threshold == 0.5 and cal["fixed"] and cal["fpr_at_fixed"]["n"] == cal["n_answers"] > 0
    assert ps.metrics["test"]["per_answer"]["threshold"] == 0.5
    assert main(["train", "--store", str(store_path), "--out", str(tmp_path / "q"), "--fixed-threshold", "1.5"]) == 2


def test_the_paper_lever_reads_the_papers_layer_fraction_and_depths():
    from types import SimpleNamespace

    from interp.probes.levers import LEVERS, _per_store

    store = SimpleNamespace(provenance={"n_layers": 24}, layers=list(range(8, 24)), depths=[0, 8, 16, 25, 50, 75])
    over = _per_store(store, LEVERS["paper"][1])
    assert over["layer"] == 16 and over["depths"] == [25, 50, 75] and over["fixed_threshold"] == 0.5
    assert over["hook"] == "ln1" and LEVERS["paper"][2] == {"C": 1.0, "class_weight": "balanced",
                                                            "standardize": False, "balance_sources": False}
    with pytest.raises(UserError, match="reads layer 16 .* which the store lacks"):
        _per_store(SimpleNamespace(provenance={"n_layers": 24}, layers=[0, 1], depths=[25]), LEVERS["paper"][1])


def test_readout_levers_at_study_positions_read_them(tmp_path):
    """userheader / respmean fit the probe at the position study's reads: with the signal planted at the user
    header only, that lever separates the classes and the base (assistant header) does not."""
    from interp.probes.synthetic import write_positions_store

    path = write_positions_store(tmp_path / "s.h5", "user_header")
    out = tmp_path / "levers"
    assert main(["levers", "--store", str(path), "--out", str(out), "--levers", "base", "userheader", "respmean",
                 *COMMON, "--stride", "20"]) == 0  # (the store holds depths 0, 10, 20 of 40-token answers)
    res = LeverResult.load(out / "levers.json")
    assert res.row("userheader").loso["macro"]["value"] > 0.9 > 0.7 > res.row("base").loso["macro"]["value"]
    assert res.row("userheader").calibration_tpr["rate"] > res.row("base").calibration_tpr["rate"]


def test_readout_loso_at_a_single_layer_is_the_sweeps_and_a_stacked_readout_refits_its_layers(store_path, tmp_path):
    """At a one-layer readout, leave-one-source-out at the probe set's readout is the sweep's table at that layer,
    number for number (same folds, texts, answers and schedule); a stacked readout reports its own layers, and a
    mean of per-layer probes says it is not computed."""
    import json

    from interp.probes.run import readout_transfer
    from interp.probes.transfer import ReadoutLoso

    common = ["--store", str(store_path), "--folds", "3", "--n-boot", "20", "--stride", "10", "--target-fpr", "0.1"]
    assert main(["sweep", *common, "--out", str(tmp_path / "sweep")]) == 0
    sweep = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    best = sweep["best_layer"]
    assert main(["train", *common, "--layer", str(best), "--out", str(tmp_path / "one")]) == 0
    one = readout_transfer(store_path, tmp_path / "one", out=tmp_path / "t1")
    assert one.readout["layers"] == [best] and not one.readout["stacked"]
    assert one.loso["macro"] == sweep["loso"]["macro"] and one.loso["rows"] == sweep["loso"]["rows"]
    assert ReadoutLoso.load(tmp_path / "t1" / "loso.json").macro == one.macro
    assert "held-out source" in (tmp_path / "t1" / "loso.md").read_text()
    assert main(["train", *common, "--combine-layers", "1", "2", "--stack", "true", "--out", str(tmp_path / "st")]) == 0
    stacked = readout_transfer(store_path, tmp_path / "st")
    assert stacked.readout == {"layers": [1, 2], "hook": "hook_resid_post", "stacked": True, "position": "probe"}
    assert stacked.macro is not None and stacked.macro != one.macro and stacked.worst["source"]
    assert main(["train", *common, "--combine-layers", "1", "2", "--out", str(tmp_path / "mean")]) == 0
    mean = readout_transfer(store_path, tmp_path / "mean")
    assert mean.loso == {} and "not computed for a mean" in mean.note and "not computed" in mean.summary()
    from interp.probes.probeset import ProbeSet

    other = ProbeSet.load(tmp_path / "st")  # a set in memory is held to the store as one on disk is
    other.provenance = {**other.provenance, "weights_sha256": "0" * 64}
    with pytest.raises(UserError, match="probe set was trained with"):
        readout_transfer(store_path, other)
