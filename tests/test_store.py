"""HDF5 store: round trip per storage dtype, selections, plain-h5py readability, refusals and damaged files."""

from __future__ import annotations

import errno

import h5py
import numpy as np
import pytest

from interp import UserError
from interp.extract.h5io import from_storage, to_storage
from interp.extract.store import ActivationStore, canonical_hook, tl_name

N, D, H, DM = 5, 3, 4, 8
DEPTHS = [0, 10, 20]
LAYERS = [0, 2]


def _examples():
    return {"id": [f"e{i}" for i in range(N)], "label": [i % 2 for i in range(N)], "source": ["s"] * N,
            "prompt": [f"p{i}" for i in range(N)], "category": [""] * N,
            "n_response_tokens": [25, 5, 30, 0, 12], "valid": [[d <= n for d in DEPTHS] for n in (25, 5, 30, 0, 12)]}


def _create(path, dtype="float32", **over):
    prov = {"model_id": "tiny", "weights_sha256": None, "template_hash": "abc", "span_ids": [1, 2, 3, 4],
            "probe_index": 2, "config": {"batch_size": 2}}
    prov.update(over)
    return ActivationStore.create(path, prov, _examples(), depths=DEPTHS, hooks=["resid_post", "ln1"], layers=LAYERS,
                                  positions=range(H), d_model=DM, storage_dtype=dtype)


def _batch(rows, seed):
    rng = np.random.default_rng(seed)
    keys = [(h, L) for h in ("hook_resid_post", "ln1.hook_normalized") for L in LAYERS]
    b = len(rows)
    return ({k: rng.normal(size=(b, D, H, DM)).astype(np.float32) for k in keys},
            {k: rng.normal(size=(b, D, DM)).astype(np.float32) for k in keys},
            {k: rng.normal(size=(b, DM)).astype(np.float32) for k in keys})


@pytest.mark.parametrize("dtype,tol", [("float32", 0.0), ("float16", 1e-3), ("bfloat16", 8e-3)])
def test_round_trip(tmp_path, dtype, tol):
    path = tmp_path / "s.h5"
    store = _create(path, dtype)
    acts, last, prompt = _batch([3, 0, 4], seed=1)
    store.write_rows([3, 0, 4], acts, last, prompt)
    assert store.done.tolist() == [True, False, False, True, True]
    store.close()
    with ActivationStore.open(path) as s:
        assert s.depths.tolist() == DEPTHS and s.layers == LAYERS and s.n_examples == N
        assert s.hooks == ["hook_resid_post", "ln1.hook_normalized"]
        assert s.provenance["config"] == {"batch_size": 2} and s.provenance["storage_dtype"] == dtype
        probe = s.read("resid_post", 2)  # probe position 2
        key = ("hook_resid_post", 2)
        for j, row in enumerate([3, 0, 4]):
            ref = acts[key][j, :, 2]
            assert np.abs(probe[row] - ref).max() <= tol * np.abs(ref).max() + 1e-12
        assert s.read("blocks.2.hook_resid_post", 2, position=0).shape == (N, D, DM)
        pr = s.read("ln1", 0, position="prompt", rows=[4, 3], depths=[20, 0])
        assert pr.shape == (2, 2, DM)
        np.testing.assert_allclose(pr[1, 0], prompt[("ln1.hook_normalized", 0)][0], rtol=tol, atol=tol * 4)
        lt = s.read("resid_post", 0, position="last_token", rows=np.array([False, False, False, True, False]))
        np.testing.assert_allclose(lt[0], last[("hook_resid_post", 0)][0], rtol=tol, atol=tol * 4)
        assert s.select("benign").tolist() == [0, 4] and s.select(1).tolist() == [3]
        assert s.select(done_only=False).tolist() == list(range(N))
        assert s.read("resid_post", 2, rows=s.select("harmful")).shape == (1, D, DM)
        ex = s.examples
        assert ex["id"].tolist() == [f"e{i}" for i in range(N)] and ex["label"].tolist() == [0, 1, 0, 1, 0]
        assert ex["valid"][3].tolist() == [True, False, False]


def test_bfloat16_conversion_rounds_to_nearest():
    x = np.array([1.0, -2.5, 3.14159265, 1e-30, 65504.0, 1.00390625], dtype=np.float32)
    y = from_storage(to_storage(x, "bfloat16"), "bfloat16")
    assert y.dtype == np.float32 and np.all(np.abs(y - x) <= np.abs(x) * 2 ** -8)
    assert y[5] == 1.0  # tie (1 + 2^-8) rounds to even


def test_plain_h5py_reads_it_and_one_layer_is_a_small_part(tmp_path):
    path = tmp_path / "s.h5"
    store = _create(path, "float16")
    store.write_rows(list(range(N)), *_batch(list(range(N)), seed=2))
    store.close()
    with h5py.File(path, "r") as f:
        ds = f["acts/hook_resid_post/layer_0"]
        assert ds.shape == (N, D, H, DM) and ds.attrs["storage_dtype"] == "float16"
        assert ds.attrs["hook_name"] == "blocks.0.hook_resid_post"
        assert f["examples/done"][()].all() and f.attrs["model_id"] == "tiny"
        acts = [f[f"acts/{h}/layer_{L}"] for h in ("hook_resid_post", "ln1.hook_normalized") for L in LAYERS]
        sizes = [a.id.get_storage_size() for a in acts]
        assert ds.id.get_storage_size() == ds.size * 2 and sizes[0] / sum(sizes) <= 0.25


def test_reopen_refuses_a_different_run(tmp_path):
    path = tmp_path / "s.h5"
    _create(path).close()
    _create(path).close()  # same identity: reopens
    for over in ({"model_id": "other"}, {"template_hash": "zzz"}, {"span_ids": [9]}, {"weights_sha256": "ff"}):
        with pytest.raises(UserError, match=next(iter(over))):
            _create(path, **over)
    with pytest.raises(UserError, match="storage_dtype"):
        _create(path, "float16")
    with pytest.raises(UserError, match="depths"):
        ActivationStore.create(path, {"model_id": "tiny", "template_hash": "abc", "span_ids": [1, 2, 3, 4],
                                      "probe_index": 2, "weights_sha256": None}, _examples(), depths=[0, 10],
                               hooks=["resid_post", "ln1"], layers=LAYERS, positions=range(H), d_model=DM,
                               storage_dtype="float32")


def test_corrupt_and_truncated_files_are_user_errors(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file at all" * 10)
    with pytest.raises(UserError, match="corrupt or truncated"):
        ActivationStore.open(junk)
    path = tmp_path / "s.h5"
    store = _create(path)
    store.write_rows([0], *_batch([0], seed=3))
    store.close()
    data = path.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt or truncated") as err:  # not "in use by another process"
        ActivationStore.open(cut)
    assert "in use" not in str(err.value)
    with pytest.raises(UserError, match="no activation store"):
        ActivationStore.open(tmp_path / "missing.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(UserError, match="not an anydepth activation store"):
        ActivationStore.open(tmp_path / "other.h5")


def test_disk_full_leaves_a_readable_store(tmp_path, monkeypatch):
    import interp.extract.store as store_mod

    path = tmp_path / "s.h5"
    store = _create(path)
    store.write_rows([0, 1], *_batch([0, 1], seed=4))
    real = store_mod.to_storage
    calls = {"n": 0}

    def failing(x, dtype):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(x, dtype)

    monkeypatch.setattr(store_mod, "to_storage", failing)
    with pytest.raises(UserError, match="disk full"):
        store.write_rows([2, 3], *_batch([2, 3], seed=5))
    store.close()
    with ActivationStore.open(path) as s:
        assert s.done.tolist() == [True, True, False, False, False]
        assert s.read("resid_post", 0).shape == (N, D, DM)


def test_a_batch_the_disk_has_no_room_for_is_refused_before_any_of_it_is_written(tmp_path, monkeypatch):
    """A real ENOSPC inside HDF5 left its caches dirty: rows were marked done over activations never written, and
    the process crashed on exit (issue 33 rerun). The room for a batch is checked first; a failed flush of a
    dataset (h5py's RuntimeError naming errno 28) is the same one-line error, and the file closes."""
    import shutil
    from collections import namedtuple


    path = tmp_path / "s.h5"
    store = _create(path)
    store.write_rows([0, 1], *_batch([0, 1], seed=4))
    before = {L: store.read("resid_post", L) for L in LAYERS}
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(1 << 30, 1 << 30, 1 << 20))
    with pytest.raises(UserError, match=r"disk full: 1.0 MiB free where .* rerun the same command to resume"):
        store.write_rows([2, 3], *_batch([2, 3], seed=5))
    monkeypatch.undo()
    import h5py

    def failing_flush(self):
        raise RuntimeError("Unable to flush dataset (file write failed: errno = 28, error message = 'No space left "
                           "on device')")

    monkeypatch.setattr(h5py.Dataset, "flush", failing_flush)
    with pytest.raises(UserError, match="disk full while writing"):
        store.write_rows([2, 3], *_batch([2, 3], seed=5))
    monkeypatch.undo()
    store.close()
    with ActivationStore.open(path) as s:
        assert s.done.tolist() == [True, True, False, False, False]
        for L in LAYERS:
            assert np.array_equal(s.read("resid_post", L)[:2], before[L][:2])


def test_hook_names():
    assert canonical_hook("resid_pre") == "hook_resid_pre" and canonical_hook("ln1") == "ln1.hook_normalized"
    assert canonical_hook("blocks.11.hook_resid_post") == "hook_resid_post"
    assert tl_name("ln1", 3) == "blocks.3.ln1.hook_normalized"
    with pytest.raises(UserError):
        canonical_hook("mlp_out")


def test_store_locked_by_another_writer_says_in_use(tmp_path):
    import subprocess
    import sys
    import time

    import h5py

    from interp import UserError
    from interp.extract.store import ActivationStore

    path = tmp_path / "locked.h5"
    h5py.File(path, "w").close()
    holder = subprocess.Popen([sys.executable, "-c", "import h5py, sys, time\n"
                               f"f = h5py.File({str(path)!r}, 'a'); print('open', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        time.sleep(0.2)
        try:
            ActivationStore.open(path, "r+")
        except UserError as err:
            assert "in use by another process" in str(err)
        else:
            import pytest

            pytest.skip("HDF5 file locking is disabled on this filesystem")
    finally:
        holder.kill()
        holder.wait()


def test_damaged_activations_are_refused_at_read(tmp_path):
    """Random bytes in the data region (here an inf) give a one-line error naming the layer, not a LinAlgError
    deep inside a fit; invalid (masked) cells are not checked."""
    import h5py

    from interp.probes.data import load_layer

    path = tmp_path / "s.h5"
    store = _create(path)
    store.write_rows(list(range(N)), *_batch(list(range(N)), seed=1))
    store.close()
    with ActivationStore.open(path) as s:
        assert np.isfinite(load_layer(s, "resid_post", 2).X).all()
    with h5py.File(path, "r+") as f:
        f["acts/hook_resid_post/layer_2"][1, 1, 2, 0] = np.inf  # row 1 (5 tokens): depth 10 is invalid
        f["acts/hook_resid_post/layer_0"][2, 1, 2, 0] = np.nan  # row 2: valid at depth 10
    with ActivationStore.open(path) as s:
        load_layer(s, "resid_post", 2)  # the damaged cell is masked
        with pytest.raises(UserError, match="layer 0 holds non-finite activations in 1 row"):
            load_layer(s, "resid_post", 0)


def test_the_span_mean_is_the_mean_of_every_stored_span_position(tmp_path):
    from interp.probes.synthetic import SyntheticSet, SyntheticSpec, write_store

    ss = SyntheticSet(SyntheticSpec(n_prompts=12, n_depths=3, d_model=8, n_layers=1, seed=2))
    path = write_store(ss, tmp_path / "s.h5", [0], 3, 1)
    with ActivationStore.open(path) as store:
        each = [store.read("hook_resid_post", 0, position=p) for p in range(3)]
        np.testing.assert_allclose(store.read("hook_resid_post", 0, position="span_mean"), np.mean(each, 0),
                                   rtol=0, atol=1e-6)
        ends = [store.read_end("hook_resid_post", 0, position=p) for p in range(3)]
        np.testing.assert_allclose(store.read_end("hook_resid_post", 0, position="span_mean"), np.mean(ends, 0),
                                   rtol=0, atol=1e-6)
        store.positions = [1]  # as a store extracted with --positions probe
        with pytest.raises(UserError, match=r"the span mean needs every span position stored \(this store holds \[1\]"):
            store.read("hook_resid_post", 0, position="span_mean")


def test_reads_take_only_the_selected_slots_and_equal_whole_rows_sliced(tmp_path):
    """Rows in any order (repeats, none), one depth, a run, scattered or reversed depths, a span index, the probe
    token and the last token: the values of plain h5py's whole rows sliced in memory (the store reads only the
    selected bytes from disk)."""
    path = tmp_path / "s.h5"
    store = _create(path, "float32")
    acts, last, prompt = _batch(list(range(N)), seed=3)
    store.write_rows(list(range(N)), acts, last, prompt)
    store.close()
    with ActivationStore.open(path) as s, h5py.File(path, "r") as f:
        span = f["acts/hook_resid_post/layer_2"][()]  # [N, D, H, DM]
        tail = f["baselines/last_token/hook_resid_post/layer_2"][()]  # [N, D, DM]
        for rows in (None, [4, 0, 2], [3, 3, 1], []):
            picked = np.arange(N) if rows is None else np.asarray(rows, int)
            for depths in (None, [10], [0, 10], [0, 20], [20, 0], [20, 10, 0]):
                cols = list(range(D)) if depths is None else [DEPTHS.index(v) for v in depths]
                for position, want in (("probe", span[:, :, 2]), (1, span[:, :, 1]), ("last_token", tail)):
                    got = s.read("resid_post", 2, position=position, depths=depths, rows=rows)
                    assert np.array_equal(got, want[picked][:, cols]), (rows, depths, position)
