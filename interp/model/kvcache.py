"""Length and exact rollback of a transformers ``DynamicCache`` (one helper for the whole toolkit).

``DynamicCache.crop`` changed meaning between transformers 5.17 and 5.24 (absolute length vs. tokens
to remove) and a sliding-window layer past its window cannot be cropped at all (it dropped the
oldest entries). We therefore never call ``crop``: :func:`mark` records, per layer, the current
length and *references* to the key/value tensors (no copy: ``update`` concatenates into new
tensors, so the recorded ones stay intact), and :func:`rollback` restores them, optionally keeping
the first ``keep`` entries added since the mark (the piggyback decode token). Full-attention layers
are rolled back by slicing (a view, O(1)); layers that did not run (early exit) are left alone.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["CacheMark", "cache_kwarg", "cache_length", "concat_rows", "drop_left", "mark", "new_cache", "pad_left",
           "rollback", "select_rows", "sliding_windows"]


def cache_kwarg(model: Any) -> str:
    """Name of the cache argument of ``model.forward`` (``cache`` since transformers 5.2x, else ``past_key_values``)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def new_cache(model: Any):
    """An empty ``DynamicCache`` with the model's layer types (sliding-window layers where the config has them)."""
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def _is_sliding(layer: Any) -> bool:
    return bool(getattr(layer, "is_sliding", False))


def sliding_windows(cache: Any) -> list[int | None]:
    """Per layer: the sliding window of a sliding layer, else ``None``."""
    return [getattr(layer, "sliding_window", None) if _is_sliding(layer) else None for layer in cache.layers]


def cache_length(cache: Any) -> int:
    """Number of positions the cache holds (tokens seen), as the model will use it for the next position."""
    if cache is None or len(cache.layers) == 0:
        return 0
    return int(cache.layers[0].get_seq_length())


@dataclass(frozen=True)
class CacheMark:
    """Per-layer state of a cache at one moment: lengths and references to its key/value tensors."""

    lengths: tuple[int, ...]
    keys: tuple[Any, ...]
    values: tuple[Any, ...]
    initialized: tuple[bool, ...]


# The cache classes whose internals (keys, values, cumulative_length, is_initialized) mark/rollback read and
# write; tested with transformers 5.17-5.24 (the range pyproject.toml allows). Anything else fails loudly.
KNOWN_LAYERS = ("DynamicLayer", "DynamicSlidingWindowLayer")


def check_cache(cache: Any) -> None:
    """Refuse a cache whose layer types the exact rollback was not written for (an upstream change or a
    static / quantized cache) instead of silently corrupting the stream."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(f"{type(cache).__name__} has no .layers: interp.model.kvcache supports transformers' "
                        "DynamicCache (transformers 5.17-5.24)")
    for i, layer in enumerate(layers):
        name = type(layer).__name__
        if name not in KNOWN_LAYERS:
            raise TypeError(f"cache layer {i} is a {name}; the exact rollback supports {', '.join(KNOWN_LAYERS)} "
                            "(transformers 5.17-5.24)")


def mark(cache: Any) -> CacheMark:
    """Record the cache's state in O(layers) without copying any tensor."""
    check_cache(cache)
    layers = cache.layers
    return CacheMark(
        lengths=tuple(int(layer.get_seq_length()) for layer in layers),
        keys=tuple(layer.keys for layer in layers),
        values=tuple(layer.values for layer in layers),
        initialized=tuple(bool(layer.is_initialized) for layer in layers),
    )


def rollback(cache: Any, to: CacheMark, keep: int = 0) -> None:
    """Return ``cache`` to the state ``to``, plus the first ``keep`` entries appended since then.

    Exact: afterwards every layer holds the same tensors (values) it would hold had only those
    ``keep`` tokens been forwarded after the mark. Layers not touched since the mark are skipped.
    """
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    if len(cache.layers) != len(to.lengths):
        raise ValueError(f"cache has {len(cache.layers)} layers, mark has {len(to.lengths)}")
    for i, layer in enumerate(cache.layers):
        before = to.lengths[i]
        now = int(layer.get_seq_length())
        added = now - before
        if added == 0:
            continue
        if added < 0 or keep > added:
            raise ValueError(f"layer {i}: cache holds {now} positions, mark {before}; cannot keep {keep}")
        if not _is_sliding(layer):
            if keep == 0 and to.initialized[i]:
                layer.keys, layer.values = to.keys[i], to.values[i]
            elif keep == 0:
                layer.reset()
            else:
                stop = before + keep
                layer.keys = layer.keys[..., :stop, :]
                layer.values = layer.values[..., :stop, :]
            continue
        # Sliding layer: restore the recorded window, then re-append the kept new entries.
        if keep == 0:
            if to.initialized[i]:
                layer.keys, layer.values = to.keys[i], to.values[i]
                layer.cumulative_length = before
            else:
                layer.reset()
            continue
        stored = layer.keys.shape[-2]
        if stored < added:
            raise ValueError(f"layer {i}: sliding window {layer.sliding_window} too small to keep {keep} of {added}")
        new_k = layer.keys[..., stored - added: stored - added + keep, :]
        new_v = layer.values[..., stored - added: stored - added + keep, :]
        if to.initialized[i]:
            new_k = torch.cat([to.keys[i], new_k], dim=-2)
            new_v = torch.cat([to.values[i], new_v], dim=-2)
        window = layer.sliding_window - 1
        layer.keys, layer.values = new_k[..., -window:, :], new_v[..., -window:, :]
        layer.cumulative_length = before + keep


# --------------------------------------------------------------------------- rows of a batch (continuous batching)
def _full_layers(cache: Any) -> list:
    check_cache(cache)
    if any(_is_sliding(layer) for layer in cache.layers):
        raise ValueError("row operations need full-attention layers only (a sliding-window cache drops entries)")
    return list(cache.layers)


def select_rows(cache: Any, keep: torch.Tensor) -> None:
    """Keep only the batch rows ``keep`` (indices, in that order) of every layer (sliding layers too: only the
    batch dimension changes)."""
    check_cache(cache)
    for layer in cache.layers:
        if layer.is_initialized:
            layer.keys, layer.values = layer.keys[keep], layer.values[keep]


def drop_left(cache: Any, n: int) -> None:
    """Drop the first ``n`` positions of every row (columns that every row masks out)."""
    if n > 0:
        for layer in _full_layers(cache):
            if layer.is_initialized:
                layer.keys, layer.values = layer.keys[..., n:, :], layer.values[..., n:, :]


def concat_rows(cache: Any, other: Any) -> None:
    """Append ``other``'s rows to ``cache``, left-padding the shorter one with zero entries (which the caller
    masks out) so both hold the same number of positions."""
    mine, theirs = _full_layers(cache), _full_layers(other)
    if len(mine) != len(theirs):
        raise ValueError(f"caches have {len(mine)} and {len(theirs)} layers")
    for a, b in zip(mine, theirs):
        width = max(a.keys.shape[-2], b.keys.shape[-2])
        a.keys, a.values = (torch.cat([pad_left(a.keys, width), pad_left(b.keys, width)]),
                            torch.cat([pad_left(a.values, width), pad_left(b.values, width)]))


def pad_left(x: torch.Tensor, width: int, dim: int = -2) -> torch.Tensor:
    """``x`` with zeros prepended along ``dim`` up to ``width`` (cache positions by default; the caller masks them)."""
    missing = width - x.shape[dim]
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)
