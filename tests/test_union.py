"""Stores read as one (:class:`~interp.extract.union.StoreUnion`) and trained on with ``--augment``: the union
reads exactly what each store reads; stores of another model or sharing an id are refused; added rows only ever
train, the main store keeps the split it gets alone, and an added row meeting a held-out prompt is left out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from interp import UserError
from interp.cli.main import main
from interp.extract.store import ActivationStore
from interp.extract.union import StoreUnion
from interp.probes.protocol import seen_in
from interp.probes.synthetic import LAYERED, SyntheticSet, SyntheticSpec, write_layered_store, write_store

TRAIN = ["--folds", "3", "--n-boot", "0", "--stride", "10", "--target-fpr", "0.1"]


def _added(path, prompts: list[str], *, seed: int = 3, layers=None, **prov):
    """A second store of the synthetic model: one answer per prompt (ids of its own); ``prov`` overrides its
    provenance."""
    n = len(prompts)
    ss = SyntheticSet(SyntheticSpec(n_prompts=n, n_depths=4, d_model=16, n_layers=6, signal=(0.5, 1.5, 2.5),
                                    margin_noise=0.5, invalid_frac=0.25, n_sources=2, seed=seed))
    write_store(ss, path, layers or LAYERED["layers"], LAYERED["span_len"], LAYERED["probe_index"],
                extra_examples={"id": [f"x{i}" for i in range(n)], "prompt": prompts, "source": ["twins"] * n})
    if prov:
        import h5py

        from interp.extract.h5io import encode_attr

        with h5py.File(path, "a") as f:
            for key, value in prov.items():
                f.attrs[key] = encode_attr(value)
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("union")
    main_store = write_layered_store(root / "a.h5")
    return root, main_store, _added(root / "b.h5", [f"twin prompt {i}" for i in range(40)])


def test_the_union_reads_what_each_store_reads_in_the_order_asked(stores):
    _, a, b = stores
    with ActivationStore.open(a) as sa, ActivationStore.open(b) as sb, StoreUnion.open([a, b]) as u:
        n = sa.n_examples
        assert u.n_examples == n + sb.n_examples and u.layers == [0, 1, 2]
        rows = np.array([n + 7, 3, n, 0, 159, n + 39, 5])
        want = [sb.read("resid_post", 1, rows=[r - n])[0] if r >= n else sa.read("resid_post", 1, rows=[r])[0]
                for r in rows]
        np.testing.assert_array_equal(u.read("resid_post", 1, rows=rows), np.stack(want))
        end = [sb.read_end("resid_post", 2, rows=[r - n])[0] if r >= n else sa.read_end("resid_post", 2, rows=[r])[0]
               for r in rows]
        np.testing.assert_array_equal(u.read_end("resid_post", 2, rows=rows), np.stack(end))
        mask = np.zeros(u.n_examples, bool)
        mask[rows] = True
        np.testing.assert_array_equal(u.read("resid_post", 0, depths=[int(sa.depths[1])], rows=mask),
                                      u.read("resid_post", 0, depths=[int(sa.depths[1])], rows=np.sort(rows)))
        ex = u.examples
        assert list(ex["id"][:n]) == list(sa.examples["id"]) and list(ex["id"][n:]) == list(sb.examples["id"])
        np.testing.assert_array_equal(u.select("harmful"), np.concatenate([sa.select("harmful"),
                                                                           sb.select("harmful") + n]))
        assert u.part.tolist() == [0] * n + [1] * sb.n_examples


@pytest.mark.parametrize("prov, msg", [({"template_hash": "t1"}, "different template_hash"),
                                       ({"weights_sha256": "w1"}, "different weights_sha256"),
                                       ({"answer_length": 3}, "different answer_length")])
def test_a_store_of_another_model_template_or_length_is_refused(stores, tmp_path, prov, msg):
    _, a, _ = stores
    other = _added(tmp_path / "o.h5", ["p0", "p1"], **prov)
    with pytest.raises(UserError, match=msg):
        StoreUnion.open([a, other])


def test_an_id_in_two_stores_and_stores_without_a_shared_layer_are_refused(stores, tmp_path):
    _, a, _ = stores
    ss = SyntheticSet(SyntheticSpec(n_prompts=4, n_depths=4, d_model=16, n_layers=3, seed=9))
    twice = write_store(ss, tmp_path / "t.h5", LAYERED["layers"], LAYERED["span_len"], LAYERED["probe_index"])
    with pytest.raises(UserError, match="example id 'e0' is in both"):
        StoreUnion.open([a, twice])
    with pytest.raises(UserError, match="share no layer"):
        StoreUnion.open([a, _added(tmp_path / "l.h5", ["q0", "q1"], layers=[5])])
    with StoreUnion.open([a, _added(tmp_path / "l2.h5", ["q0", "q1"], layers=[2, 5])]) as u:
        assert u.layers == [2]


def _train(store, out, *extra) -> dict:
    assert main(["train", "--store", str(store), "--out", str(out), *TRAIN, *extra]) == 0
    return json.loads((out / "probeset.json").read_text())


def test_added_rows_only_train_and_the_main_store_keeps_its_split(stores, tmp_path):
    _, a, _ = stores
    with ActivationStore.open(a) as sa:
        prompts = [str(p) for p in sa.examples["prompt"]]
    alone = _train(a, tmp_path / "alone")
    test_prompt = next(p for p in prompts if seen_in(alone["split"], ("test",)).why(p, None) is not None)
    # 40 new prompts, and one answer to a test prompt of the main store: that one must not train
    b = _added(tmp_path / "b.h5", [*(f"twin prompt {i}" for i in range(40)), test_prompt])
    added = _train(a, tmp_path / "added", "--augment", str(b))
    for role in ("calibration", "test"):
        assert added["split"][role] == alone["split"][role]
    assert added["split"]["train"]["n_rows"] == alone["split"]["train"]["n_rows"] + 40
    assert added["metrics"]["augment"]["trained_rows"] == 40 and added["metrics"]["augment"]["left_out_rows"] == 1
    assert added["metrics"]["augment"]["stores"][0]["path"] == str(b)
    assert added["thresholds"]["calibration"]["n_answers"] == alone["thresholds"]["calibration"]["n_answers"]
    for key in ("n_harmful", "n_benign", "n_prompts"):
        assert added["metrics"]["test"][key] == alone["metrics"]["test"][key]
    assert added["provenance"]["union_of"][1]["n_examples"] == 41
    assert "augment" not in alone["metrics"]


def test_training_on_the_union_equals_training_on_one_store_holding_both(stores, tmp_path):
    """The slow obvious path: one store written with both stores' rows, its second half marked train-only."""
    from interp.probes.oof import ProbeConfig
    from interp.probes.run import train
    from interp.probes.train import TrainConfig, train_probeset

    _, a, b = stores
    cfg = TrainConfig(folds=3, n_boot=0, stride=10, target_fpr=0.1, augment=[str(b)])
    via_union = train(a, cfg, ProbeConfig(), progress=False)
    with ActivationStore.open(a) as sa, ActivationStore.open(b) as sb, StoreUnion.open([a, b]) as u:
        ex = u.examples
        keep = ("id", "label", "source", "kind", "prompt", "category", "n_response_tokens", "valid", "end_depth",
                "finished")
        one = ActivationStore.create(tmp_path / "one.h5", dict(sa.provenance), {k: ex[k] for k in keep},
                                     depths=sa.depths.tolist(), hooks=["resid_post"], layers=sa.layers,
                                     positions=sa.positions, d_model=16, storage_dtype="float32")
        acts, last, prompt = {}, {}, {}
        for layer in sa.layers:
            key = ("hook_resid_post", layer)
            acts[key] = np.concatenate([s.h5[f"acts/hook_resid_post/layer_{layer}"][()] for s in (sa, sb)])
            last[key] = np.concatenate([s.h5[f"baselines/last_token/hook_resid_post/layer_{layer}"][()]
                                        for s in (sa, sb)])
            prompt[key] = np.concatenate([s.h5[f"baselines/prompt/hook_resid_post/layer_{layer}"][()]
                                          for s in (sa, sb)])
        one.write_rows(list(range(u.n_examples)), acts, last, prompt)
        direct = train_probeset(one, TrainConfig(folds=3, n_boot=0, stride=10, target_fpr=0.1), ProbeConfig(),
                                progress=False, train_only=u.part > 0)
        one.close()
    np.testing.assert_allclose(via_union.weights, direct.weights, rtol=1e-5, atol=1e-6)
    assert via_union.threshold == pytest.approx(direct.threshold, rel=1e-6)
    assert via_union.split == direct.split


def test_bad_added_stores_get_one_line_errors_and_write_nothing(stores, tmp_path, capsys):
    _, a, _ = stores
    other = _added(tmp_path / "o.h5", ["p0", "p1"], template_hash="t1")
    for added, msg in ((str(tmp_path / "missing.h5"), "no store at"), (str(other), "different template_hash")):
        assert main(["train", "--store", str(a), "--out", str(tmp_path / "p"), *TRAIN, "--augment", added]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0]
        assert not (tmp_path / "p").exists()
