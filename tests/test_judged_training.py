"""Training that leaves out the own deep prefills a content judge calls harmless (``--judgments DIR
--drop-judged-harmless true``, the ``judged`` lever): the fitted probe is the probe fitted on the training rows
without them, every fit leaves them out (probes, leave-one-source-out training folds), and the split, the
calibration and the test answers are untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest

from interp import UserError
from interp.evaluate.judgments import harmless_prefills, judgment_key
from interp.probes.oof import ProbeConfig
from interp.probes.synthetic import LAYERED, SyntheticSet, SyntheticSpec, write_store
from interp.probes.train import TrainConfig

COMMON = dict(folds=3, n_boot=20, stride=10, target_fpr=0.1, seed=0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A layered store whose harmful rows are own deep prefills with answer text, and a judge folder that calls
    every third of them harmless."""
    root = tmp_path_factory.mktemp("judged")
    ss = SyntheticSet(SyntheticSpec(n_prompts=120, n_depths=4, d_model=16, n_layers=3, signal=(0.5, 1.5, 2.5),
                                    margin_noise=0.5, invalid_frac=0.25, n_sources=2, seed=5))
    n = len(ss.y)
    texts = [f"answer number {i} with some words" for i in range(n)]
    kinds = np.where(ss.y == 1, "prefill", "own").tolist()
    path = write_store(ss, root / "s.h5", LAYERED["layers"], LAYERED["span_len"], LAYERED["probe_index"],
                       extra_examples={"kind": kinds, "response": texts,
                                       "response_chars": np.full((n, len(ss.depths)), 20)})
    judge = root / "judge"
    judge.mkdir()
    (judge / "judge.json").write_text(json.dumps({"judge_model": "fake"}))
    harmless = np.flatnonzero(ss.y == 1)[::3].tolist()
    with (judge / "judgments.jsonl").open("w") as f:
        for i in np.flatnonzero(ss.y == 1):
            f.write(json.dumps({"key": judgment_key(str(ss.groups[i]), texts[i]),
                                "log_odds": -1.0 if i in harmless else 2.0}) + "\n")
    return path, judge, np.isin(np.arange(n), harmless)


def _train(path, **kw):
    from interp.extract.store import ActivationStore
    from interp.probes.train import train_probeset

    with ActivationStore.open(path) as store:
        return train_probeset(store, TrainConfig(**COMMON, **kw), ProbeConfig(), progress=False)


def test_the_probe_is_the_fit_on_the_training_rows_without_the_judged_harmless(corpus):
    """Exactness against the obvious path: load the training rows minus the judged-harmless prefills and fit."""
    from interp.extract.store import ActivationStore
    from interp.probes.data import finished_meta, load_layer
    from interp.probes.oof import fit_probes

    path, judge, harmless = corpus
    base = _train(path, layer=2)
    ps = _train(path, layer=2, judgments=str(judge), drop_judged_harmless=True)
    with ActivationStore.open(path) as store:
        meta = finished_meta(store)
        train = np.isin(meta["groups"], base.split["train"]["groups"])
        out = harmless & train
        assert meta["y"].shape == harmless.shape and ps.metrics["dropped_judged_harmless"] == out.sum() > 5
        tr = load_layer(store, "hook_resid_post", 2, "probe", None, pairs_only=True, select=train & ~out)
    X, y, rows, _ = tr.flat()
    want = fit_probes(X, y, np.ones((1, len(y)), bool), ProbeConfig(), tr.sources[rows])[0]
    assert ps.metrics["judge"] == {"judge_model": "fake"}  # the judge that decided, recorded with the probes
    k = ps.layers.index(2)
    np.testing.assert_allclose(ps.weights[k], want.coef.reshape(-1), rtol=1e-5, atol=1e-6)
    assert not np.allclose(ps.weights[k], base.weights[base.layers.index(2)], atol=1e-3)
    # the split record, and the answers calibrated and tested on, are the base recipe's
    assert ps.split == base.split
    for part in ("answers", "kinds"):
        assert ps.thresholds["calibration"][part] == base.thresholds["calibration"][part]
    t, b = ps.metrics["test"], base.metrics["test"]
    assert (t["n_harmful"], t["n_benign"]) == (b["n_harmful"], b["n_benign"])
    assert t["per_answer"]["tpr"]["n"] == b["per_answer"]["tpr"]["n"]


def test_leave_one_source_out_drops_them_from_training_folds_only(corpus, monkeypatch):
    import interp.probes.loso as loso
    import interp.probes.sweep  # noqa: F401  (binds the real function at import, before the patch below)
    from interp.extract.store import ActivationStore
    from interp.probes.transfer import readout_loso

    path, judge, harmless = corpus
    seen = []
    monkeypatch.setattr(loso, "leave_one_source_out", lambda data, split, *a, **k: seen.append(split) or {})
    for kw in ({}, {"judgments": str(judge), "drop_judged_harmless": True}):
        ps = _train(path, layer=2, **kw)
        with ActivationStore.open(path) as store:
            readout_loso(store, ps, TrainConfig(**COMMON, layer=2, **kw), ProbeConfig(), texts=np.array([]),
                         answers=None)
    base, dropped = seen
    assert not dropped.train[:, harmless].any() and base.train[:, harmless].any()
    np.testing.assert_array_equal(dropped.train[:, ~harmless], base.train[:, ~harmless])
    np.testing.assert_array_equal(dropped.test, base.test)  # still scored when their fold tests them


def test_missing_judgments_and_options_are_one_line_errors(corpus, tmp_path):
    path, judge, harmless = corpus
    with pytest.raises(UserError, match="needs --judgments DIR"):
        TrainConfig(drop_judged_harmless=True).validate()
    with pytest.raises(UserError, match="holds no judgments"):
        _train(path, layer=2, judgments=str(tmp_path), drop_judged_harmless=True)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "judge.json").write_text((judge / "judge.json").read_text())
    lines = (judge / "judgments.jsonl").read_text().splitlines()
    (partial / "judgments.jsonl").write_text("\n".join(lines[:10]) + "\n")
    with pytest.raises(UserError, match=r"of the \d+ own deep prefills to train on have no judgment"):
        _train(path, layer=2, judgments=str(partial), drop_judged_harmless=True)
    meta = {"y": np.array([1]), "kinds": np.array(["prefill"]), "prompts": np.array(["p"])}
    with pytest.raises(UserError, match="keeps no answer text"):
        harmless_prefills(meta, judge, np.array([True]))


def test_the_judged_lever_row(corpus, tmp_path):
    from interp.cli.main import main
    from interp.probes.levers import LeverResult

    path, judge, _ = corpus
    args = ["levers", "--store", str(path), "--out", str(tmp_path / "lv"), "--levers", "base", "judged",
            "--layer", "2", "--folds", "3", "--n-boot", "20", "--stride", "10", "--target-fpr", "0.1"]
    assert main([*args, "--judgments", str(judge)]) == 0
    res = LeverResult.load(tmp_path / "lv" / "levers.json")
    assert res.row("judged").test_tpr["n"] == res.row("base").test_tpr["n"]
    assert res.row("judged").threshold != res.row("base").threshold
    n = res.row("judged").dropped_judged_harmless
    assert n > 5 and res.row("base").dropped_judged_harmless is None
    assert f"; {n} own deep prefills of the training prompts left out." in res.summary()
    assert main(args) == 2  # the lever without --judgments: a one-line error
