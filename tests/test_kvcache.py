"""Exact rollback of a transformers DynamicCache (full and sliding-window layers, partial layers, keep)."""

import pytest
import torch

from interp.model.kvcache import cache_kwarg, cache_length, mark, new_cache, rollback
from interp.testing import tiny_model


def _fwd(model, ids, cache, start):
    pos = torch.arange(start, start + ids.shape[1])[None]
    out = model(input_ids=ids, position_ids=pos, use_cache=True, **{cache_kwarg(model): cache})
    return out.logits


@pytest.mark.parametrize("arch", ["qwen2", "gemma2"])
@pytest.mark.parametrize("keep", [0, 1, 2])
def test_rollback_then_continue_equals_fresh(arch, keep):
    model, _ = tiny_model(arch, n_layers=2, sliding_window=8)
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, 300, (2, 20), generator=g)  # longer than the sliding window
    extra = torch.randint(0, 300, (2, 5), generator=g)
    nxt = torch.randint(0, 300, (2, 1), generator=g)
    with torch.no_grad():
        cache = new_cache(model)
        _fwd(model, prefix, cache, 0)
        m = mark(cache)
        _fwd(model, extra, cache, 20)
        rollback(cache, m, keep=keep)
        assert cache_length(cache) == 20 + keep
        got = _fwd(model, nxt, cache, 20 + keep)
        ref_cache = new_cache(model)
        ref = _fwd(model, torch.cat([prefix, extra[:, :keep], nxt], dim=1), ref_cache, 0)[:, -1:]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert (got - ref).abs().max() < 1e-4 * ref.abs().max()


def test_rollback_skips_layers_that_did_not_run():
    model, _ = tiny_model("llama", n_layers=3)
    ids = torch.randint(0, 300, (1, 10))
    with torch.no_grad():
        cache = new_cache(model)
        _fwd(model, ids, cache, 0)
        m = mark(cache)
        k1 = cache.layers[1].keys
        # simulate an early exit: only layer 0 saw the span
        layer0 = cache.layers[0]
        layer0.update(torch.zeros_like(layer0.keys[..., :3, :]), torch.zeros_like(layer0.values[..., :3, :]))
        assert layer0.get_seq_length() == 13
        rollback(cache, m)
    assert [layer.get_seq_length() for layer in cache.layers] == [10, 10, 10]
    assert cache.layers[1].keys is k1  # untouched, not copied
    assert cache.layers[0].keys is m.keys[0]


def test_rollback_rejects_bad_keep():
    model, _ = tiny_model("qwen2", n_layers=2)
    with torch.no_grad():
        cache = new_cache(model)
        _fwd(model, torch.randint(0, 300, (1, 4)), cache, 0)
        m = mark(cache)
        _fwd(model, torch.randint(0, 300, (1, 2)), cache, 4)
        with pytest.raises(ValueError):
            rollback(cache, m, keep=3)
        with pytest.raises(ValueError):
            rollback(cache, m, keep=-1)


def test_unknown_cache_layers_are_refused():
    """mark() refuses cache layers whose internals the rollback was not written for (fails loudly, never corrupts)."""
    from types import SimpleNamespace

    from interp.model.kvcache import mark

    class StaticLayer:  # stands in for a cache type the rollback does not know
        pass

    with pytest.raises(TypeError, match="StaticLayer"):
        mark(SimpleNamespace(layers=[StaticLayer()]))
    with pytest.raises(TypeError, match="no .layers"):
        mark(object())
