"""Store adapter and the ``anydepth sweep`` / ``anydepth train`` commands on a small synthetic store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from interp import UserError
from interp.cli.main import main
from interp.extract.store import ActivationStore
from interp.probes import ProbeSet
from interp.probes.data import load_layer
from interp.probes.protocol import content_groups
from interp.probes.synthetic import SyntheticSet, SyntheticSpec, write_store

LAYERS = [0, 1, 2]
H, PROBE = 3, 2  # span length, probe index inside the span


def _spec():
    return SyntheticSpec(n_prompts=60, n_depths=4, d_model=16, n_layers=3, signal=(0.0, 1.0, 4.0),
                         margin_noise=0.5, invalid_frac=0.25, seed=3)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    ss = SyntheticSet(_spec())
    n, dd = ss.spec.n_prompts, ss.spec.n_depths
    path = write_store(ss, tmp_path_factory.mktemp("store") / "s.h5", LAYERS, H, PROBE, rows=n - 4, extra_examples={
        "response": [f"plain words number {i} " * 4 for i in range(n)],  # text carries no label
        "response_chars": np.tile(np.arange(dd) * 20, (n, 1))})
    return path, ss


def test_load_layer_reads_finished_rows(store_path):
    path, ss = store_path
    with ActivationStore.open(path) as store:
        data = load_layer(store, "resid_post", 2, "probe", depths=[10, 30])
        assert data.X.shape == (56, 2, 16) and data.valid.shape == (56, 2)
        assert np.array_equal(data.X, ss.layer_array(2)[:56][:, [1, 3]])
        assert np.array_equal(data.valid, ss.valid[:56][:, [1, 3]])
        assert np.array_equal(data.y, ss.y[:56])
        assert list(data.groups) == list(content_groups(ss.groups[:56]))  # prompt content groups
        assert load_layer(store, "resid_post", 1, "prompt").X.shape == (56, 4, 16)
        with pytest.raises(UserError):
            load_layer(store, "resid_post", 9)
        with pytest.raises(UserError, match=r"^depths \[5\] not in the store \(it holds \[0, 10, 20, 30\]\)$"):
            load_layer(store, "resid_post", 1, depths=[5])


def test_sweep_and_train_commands(store_path, tmp_path, capsys):
    path, ss = store_path
    out = tmp_path / "sweep"
    # the fixture store has 4 unfinished rows: refused without --allow-partial, with a count
    assert main(["sweep", "--store", str(path), "--out", str(out), "--folds", "3"]) == 2
    assert "4 of 60 rows are not extracted yet" in capsys.readouterr().err
    assert main(["sweep", "--store", str(path), "--out", str(out), "--folds", "3", "--n-boot", "50",
                 "--target-fpr", "0.1", "--allow-partial", "true"]) == 2  # default stride 25: the store lacks 25
    assert "at depth 25, which the store does not hold" in capsys.readouterr().err
    assert main(["sweep", "--store", str(path), "--out", str(out), "--folds", "3", "--n-boot", "50",
                 "--target-fpr", "0.1", "--allow-partial", "true", "--stride", "10"]) == 0
    res = json.loads((out / "sweep.json").read_text())
    assert res["best_layer"] == 2 and res["split"]["kind"] == "grouped"
    probe = res["per_layer"]["probe"]
    assert probe[2]["auroc"]["value"] > 0.95 and abs(probe[0]["auroc"]["value"] - 0.5) < 0.25
    assert abs(res["per_layer"]["shuffled"][2]["auroc"]["value"] - 0.5) < 0.25
    assert res["per_layer"]["last_token"][2]["auroc"]["value"] < 0.8  # noise at the baseline positions
    assert len(res["per_depth"]["probe"][2]) == 4
    for stem in ("layer_sweep", "layer_depth_auroc", "depth_curve", "score_hist", "reliability"):
        assert (out / f"{stem}.png").stat().st_size > 0 and (out / f"{stem}.svg").exists()
    assert (out / "config.json").exists()
    assert abs(res["per_layer"]["ngram"][2]["auroc"]["value"] - 0.5) < 0.25  # the text carries no label
    assert res["best"]["probe_minus_ngram_auroc"]["beats"]
    loso = {r["source"]: r for r in res["loso"]["rows"]}
    assert set(loso) == {"src0", "src1"} and loso["src0"]["probe"]["auroc"]["value"] > 0.9
    assert loso["src0"]["probe_minus_ngram"]["beats"]  # the text carries no label; the planted direction does
    macro = res["loso"]["macro"]["probe"]  # the mean over held-out sources, with a CI over prompt groups
    assert macro["n_sources"] == 2 and macro["lo"] <= macro["value"] <= macro["hi"] and macro["value"] > 0.9
    per_depth = res["loso"]["per_depth"]["probe"]
    assert [r["depth"] for r in per_depth] == res["depths"] and min(r["macro"]["value"] for r in per_depth) > 0.9
    assert max(abs(r["macro"]["value"] - 0.5) for r in res["loso"]["per_depth"]["ngram"]) < 0.3
    assert "probe" in res["loso"]["pooled_calibration_diagnostic"]  # kept, named as what it is

    pdir = tmp_path / "probes"
    assert main(["train", "--store", str(path), "--out", str(pdir), "--folds", "3", "--n-boot", "20",
                 "--standardize", "true", "--stride", "10", "--allow-partial", "true"]) == 0
    assert main(["train", "--store", str(path), "--out", str(tmp_path / "p1"), "--folds", "1",
                 "--allow-partial", "true"]) == 2
    assert "--folds must be >= 2" in capsys.readouterr().err
    with ActivationStore.open(path) as store:
        ps = ProbeSet.load(pdir, expect_provenance=store.provenance)
        data = load_layer(store, "resid_post", 2)
    assert ps.best_layer == 2 and ps.hook == "hook_resid_post" and ps.layers == LAYERS
    test_rows = np.isin(data.groups, ps.split["test"]["groups"])
    assert test_rows.any() and not np.isin(data.groups, ps.split["train"]["groups"])[test_rows].any()
    X, y, rows, _ = data.flat()
    held = test_rows[rows]
    assert ((ps.score(X[held]) > 0.5) == (y[held] == 1)).mean() > 0.9  # on prompts the probe never saw
    assert ps.config["probe"]["standardize"] is True and ps.mean is not None
    roles = {r: set(ps.split[r]["groups"]) for r in ("train", "calibration", "test")}
    assert not (roles["train"] & roles["test"]) and not (roles["calibration"] & roles["test"])
    assert not (roles["train"] & roles["calibration"]) and all(roles.values())
    test = ps.metrics["test"]
    assert test["per_check"]["probe"]["auroc"]["value"] > 0.95 and test["per_check"]["ngram"] is not None
    assert test["per_answer"]["fpr"]["n"] == test["n_benign"] and ps.thresholds["calibration"]["n_answers"] > 0
    assert ps.schedule["stride"] == 10 and "probe_minus_ngram_auroc" in test
    assert test["per_check"]["shuffled"] is not None  # one permutation of ~30 prompts: its value is noisy
    with pytest.raises(UserError):
        ProbeSet.load(pdir, expect_provenance={**store.provenance, "template_hash": "other"})
    assert main(["sweep", "--store", str(tmp_path / "nope.h5"), "--out", str(out)]) == 2


@pytest.mark.parametrize("extra, message", [
    (["--folds", "1"], "--folds must be >= 2"),
    (["--target-fpr", "0"], "--target-fpr must be in (0, 1)"),
    (["--calib-fraction", "0.6", "--test-fraction", "0.5"], "must leave prompts to train on"),
    (["--layers", "7"], "layer 7 is not in the store (it holds [0, 1, 2])"),
    (["--layers", "-1"], "does not record the model's layer count"),
    (["--k-of-n", "0"], "--k-of-n must be >= 1"),
    (["--depths", "7"], "[7] not in"),  # a depth the store lacks (sweep gave a traceback; issue 33 item 6)
])
def test_train_and_sweep_options_get_one_line_errors(store_path, tmp_path, capsys, extra, message):
    path, _ = store_path
    for cmd in (["train", "--out", str(tmp_path / "p")], ["sweep", "--out", str(tmp_path / "s")]):
        if cmd[0] == "sweep" and extra[0] in ("--calib-fraction", "--k-of-n"):
            continue  # train-only options
        assert main([*cmd, "--store", str(path), "--allow-partial", "true", *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (cmd[0], err)


def test_negative_layers_count_from_the_models_last_layer(tmp_path):
    """--layers -1 means the model's last layer, as in `anydepth extract --layers` (the store records n_layers)."""
    from interp.probes.data import StoreSliceConfig

    class Store:
        layers, provenance = [0, 5, 11], {"n_layers": 12}

    assert StoreSliceConfig(layers=[-1, 5]).resolve_layers(Store()) == [5, 11]
    assert StoreSliceConfig().resolve_layers(Store()) == [0, 5, 11]
    with pytest.raises(UserError, match="layer 10 is not in the store"):
        StoreSliceConfig(layers=[-2]).resolve_layers(Store())


def test_train_refuses_a_calibration_set_without_own_answers_and_a_store_without_splits(tmp_path, capsys):
    """The threshold is set on the model's own answers: a store whose benign rows are all third-party text is
    refused with the fix; a store too small for a calibration or test split names the real cause."""
    ss = SyntheticSet(SyntheticSpec(n_prompts=40, n_depths=3, d_model=8, n_layers=1, seed=2))
    third = write_store(ss, tmp_path / "third.h5", [0], H, PROBE, extra_examples={"kind": ["dataset"] * 40})
    assert main(["train", "--store", str(third), "--out", str(tmp_path / "p"), "--stride", "10",
                 "--folds", "2"]) == 2
    err = capsys.readouterr().err
    assert "no benign answers of kind own/prefill to calibrate the threshold on" in err and "--calibrate-on" in err
    assert not (tmp_path / "p").exists()  # nothing half-written
    assert main(["train", "--store", str(third), "--out", str(tmp_path / "p"), "--stride", "10", "--folds", "2",
                 "--calibrate-on", "dataset"]) == 0  # asked for: calibrated on that text, and it says so
    assert ProbeSet.load(tmp_path / "p").thresholds["calibrate_on"] == ["dataset"]
    tiny = write_store(SyntheticSet(SyntheticSpec(n_prompts=4, n_depths=3, d_model=8, n_layers=1, seed=2)),
                       tmp_path / "tiny.h5", [0], H, PROBE)
    assert main(["train", "--store", str(tiny), "--out", str(tmp_path / "q"), "--stride", "10", "--folds", "2"]) == 2
    err = capsys.readouterr().err
    assert "too few prompt groups" in err and "Traceback" not in err


def test_too_few_training_prompts_for_the_folds_names_the_split_as_the_cause(tmp_path, capsys):
    """The calibration and test fractions leave the training split too small for the folds: the error says so and
    what to change (it only said "lower --folds", issue 33)."""
    ss = SyntheticSet(SyntheticSpec(n_prompts=24, n_depths=3, d_model=8, n_layers=1, seed=2))
    path = write_store(ss, tmp_path / "s.h5", [0], H, PROBE)
    assert main(["train", "--store", str(path), "--out", str(tmp_path / "p"), "--stride", "10", "--folds", "5",
                 "--calib-fraction", "0.4", "--test-fraction", "0.3"]) == 2
    err = capsys.readouterr().err
    assert "in the training split (" in err and "after --calib-fraction 0.4 and --test-fraction 0.3" in err
    assert "lower --calib-fraction / --test-fraction" in err and not (tmp_path / "p").exists()


def test_reading_only_the_valid_pairs_changes_no_number(store_path, tmp_path, monkeypatch):
    """`sweep` and `train` read the probe's activations as valid pairs only (`load_layer(pairs_only=True)`, in row
    chunks; `train` reads the training rows alone): every number equals the dense whole-layer path's, bit for bit."""
    import interp.probes.data as data_mod
    import interp.probes.run as run_mod
    from interp.probes.data import load_layer as real_load
    from interp.probes.run import SweepConfig, sweep, train
    from interp.probes.train import TrainConfig

    path, _ = store_path
    with ActivationStore.open(path) as store:
        pairs = real_load(store, "resid_post", 2, pairs_only=True, chunk_rows=7)
        dense = real_load(store, "resid_post", 2)
        assert pairs.X is None and pairs.Xv.shape == (int(dense.valid.sum()), 16)
        assert np.array_equal(pairs.flat()[0], dense.flat()[0])
        assert np.array_equal(pairs.subset(dense.y == 1).flat()[0], dense.subset(dense.y == 1).flat()[0])
        ok = dense.valid[:, 1]
        assert np.array_equal(pairs.column(1)[ok], dense.column(1)[ok])
        some = np.arange(len(dense.y)) % 3 != 1  # reading a subset of the rows alone equals subsetting the layer
        alone = real_load(store, "resid_post", 2, pairs_only=True, chunk_rows=7, select=some)
        assert np.array_equal(alone.flat()[0], dense.subset(some).flat()[0])
        assert np.array_equal(alone.X_end, dense.subset(some).X_end) and np.array_equal(alone.y, dense.y[some])
    scfg = SweepConfig(folds=3, n_boot=30, stride=10, target_fpr=0.1, allow_partial=True)
    tcfg = TrainConfig(folds=3, n_boot=30, stride=10, target_fpr=0.1, allow_partial=True)
    got = (sweep(path, scfg), train(path, tcfg, progress=False))

    def dense_only(*args, pairs_only=False, select=None, **kw):  # the whole layer, dense, then its rows
        whole = real_load(*args, **kw)
        return whole if select is None else whole.subset(select)

    monkeypatch.setattr(run_mod, "load_layer", dense_only)
    monkeypatch.setattr(data_mod, "load_layer", dense_only)  # train imports it from here when it runs
    want = (sweep(path, scfg), train(path, tcfg, progress=False))
    assert got[0].to_json() == want[0].to_json()
    for m in want[0].oof:
        assert np.array_equal(got[0].oof[m], want[0].oof[m], equal_nan=True)
    a, b = got[1], want[1]
    assert np.array_equal(a.weights, b.weights) and np.array_equal(a.bias, b.bias) and a.threshold == b.threshold
    assert json.dumps(a.metrics, sort_keys=True) == json.dumps(b.metrics, sort_keys=True)


def test_the_held_out_ngram_reads_the_text_of_the_depths_it_scores(tmp_path):
    """With --depths a subset, the n-gram baseline's texts are those of the selected depths: here the label's word
    shows only from the third depth on, so reading the first columns instead would see no label."""
    from interp.probes.run import train
    from interp.probes.train import TrainConfig

    ss = SyntheticSet(SyntheticSpec(n_prompts=80, n_depths=5, d_model=8, n_layers=1, signal=(2.0,),
                                    invalid_frac=0.0, seed=4))
    n = ss.spec.n_prompts
    words = [("harm" if y else "calm") + f" {i} " for i, y in enumerate(ss.y)]
    path = write_store(ss, tmp_path / "s.h5", [0], H, PROBE, extra_examples={
        "response": [f"aaaa bbbb cccc dddd {w}" + "eeee " * 4 for w in words],  # the label word at characters 20+
        "response_chars": np.tile([0, 10, 25, 30, 40], (n, 1))})
    ps = train(path, TrainConfig(store=str(path), depths=[20, 40], stride=20, n_boot=0, target_fpr=0.1),
               progress=False)
    assert ps.metrics["test"]["per_check"]["ngram"]["auroc"]["value"] > 0.95
