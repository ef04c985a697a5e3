"""`train` and the stacked probe hold one layer's activations at a time, and the memory-saving paths give the
numbers of the obvious ones (chunked logits, the preconditioner's symmetric fill, lazily stacked layers)."""

from __future__ import annotations

import gc
import weakref
from functools import partial

import numpy as np
import pytest
from scipy.linalg import blas

import interp.probes.baselines as baselines_mod
import interp.probes.data as data_mod
import interp.probes.readout as readout_mod
from interp.extract.store import ActivationStore
from interp.probes import fit
from interp.probes.data import load_layer
from interp.probes.oof import ProbeConfig
from interp.probes.stack import stack_layers
from interp.probes.synthetic import write_layered_store
from interp.probes.train import TrainConfig, train_probeset


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return write_layered_store(tmp_path_factory.mktemp("store") / "s.h5")


def _watch_loads(monkeypatch) -> list[int]:
    """Wrap every module's load_layer: record, at each read of a layer's pairs, how many layers read earlier
    still hold their activations (anything keeping them alive: a list, a subset, a stray name)."""
    alive: list[weakref.ref] = []
    seen: list[int] = []
    real = data_mod.load_layer

    def watched(*args, **kwargs):
        gc.collect()
        seen.append(sum(r() is not None for r in alive))
        out = real(*args, **kwargs)
        if out.Xv is not None and out.Xv.size:
            alive.append(weakref.ref(out.Xv))
        return out

    for mod in (data_mod, readout_mod, baselines_mod):
        monkeypatch.setattr(mod, "load_layer", watched)
    return seen


@pytest.mark.parametrize("combine_top,stack", [(0, False), (2, False), (2, True)])
def test_train_reads_each_layer_with_no_other_layer_held(store_path, monkeypatch, combine_top, stack):
    """Per-layer CV, the readout's scores, the baselines' train and test reads and the stacked fit: no read
    of a layer finds another layer's activations alive (peak memory independent of the layer count)."""
    seen = _watch_loads(monkeypatch)
    cfg = TrainConfig(combine_top=combine_top, stack=stack, n_boot=0, stride=10, folds=3, calib_fraction=0.3,
                      test_fraction=0.2, target_fpr=0.1)
    with ActivationStore.open(store_path) as store:
        train_probeset(store, cfg, ProbeConfig(), progress=False)
    assert len(seen) >= 4 + combine_top and max(seen) == 0, seen


def test_stacking_lazily_read_layers_equals_stacking_them_read_and_releases_each(store_path):
    with ActivationStore.open(store_path) as store:
        read = [load_layer(store, "hook_resid_post", layer, "probe", pairs_only=True) for layer in (1, 2)]
        loads = [partial(load_layer, store, "hook_resid_post", layer, "probe", pairs_only=True) for layer in (1, 2)]
        dense = [load_layer(store, "hook_resid_post", layer, "probe") for layer in (1, 2)]
        lazy = stack_layers(loads)
    eager = stack_layers(read)
    assert np.array_equal(lazy.Xv, eager.Xv) and np.array_equal(lazy.X_end, eager.X_end)
    assert np.array_equal(lazy.Xv, np.concatenate([r.Xv for r in read], axis=1))
    grid = stack_layers(dense)  # a dense first layer: the dense grid, the same features at every valid pair
    assert np.array_equal(grid.features(*lazy.pairs()), lazy.Xv) and lazy.layer is None
    refs = []

    def read_and_watch(store, layer):
        out = load_layer(store, "hook_resid_post", layer, "probe", pairs_only=True)
        refs.append(weakref.ref(out.Xv))
        return out

    with ActivationStore.open(store_path) as store:
        stacked = stack_layers([partial(read_and_watch, store, layer) for layer in (1, 2)])
    gc.collect()
    assert np.array_equal(stacked.Xv, eager.Xv) and len(refs) == 2
    assert all(r() is None for r in refs)  # the stack kept no layer's own buffer


def test_logits_in_blocks_equal_one_product(monkeypatch):
    rng = np.random.default_rng(0)
    params = fit.LinearParams(rng.normal(size=(2, 3, 40)), rng.normal(size=(2, 3)), rng.normal(size=(2, 3, 40)),
                              rng.uniform(0.5, 2, (2, 3, 40)))
    X = rng.normal(size=(1001, 40)).astype(np.float32)
    whole = params.logit(X)
    monkeypatch.setattr(fit, "LOGIT_BLOCK_BYTES", 8 * 40 * 7)  # 7 rows at a time
    assert np.array_equal(params.logit(X), whole) and whole.shape == (2, 3, 1001)
    assert params.logit(X[:0]).shape == (2, 3, 0)


@pytest.mark.parametrize("d,block", [(5, 2), (130, 64), (64, 64), (300, 7)])
def test_the_preconditioners_symmetric_fill_equals_the_triangles_sum(d, block):
    X = np.random.default_rng(d).normal(size=(50, d)).astype(np.float32)
    upper = blas.ssyrk(1.0, X.T)
    out = np.full((d, d), np.nan)
    fit._symmetric_from_upper(out, upper, block)
    assert np.array_equal(out, (np.triu(upper) + np.triu(upper, 1).T).astype(np.float64))
