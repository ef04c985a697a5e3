"""The alternatives to packed extraction, each written as a careful user would, for benchmarks and exactness tests.

All three return the residual stream after every layer at the Safety-Token span inserted after each depth,
``{layer: float32 [B, D, h, d]}`` on the CPU, for rows of equal prompt and response lengths (batched without
padding, so no attention mask is needed anywhere):

* :func:`reencode` — one plain causal forward per depth over ``prompt + response[:d] + span`` (no custom mask,
  no position ids: the ``is_causal`` kernels), all rows in one batch;
* :func:`ada_scheme` with ``copy=True`` — ADA's own scheme: grow one KV cache through the response and, at each
  depth, deep-copy it and forward the span on the copy;
* :func:`ada_scheme` with ``copy=False`` — the same with the O(1) :func:`interp.model.kvcache.rollback` in place
  of the copy (the strongest form of that scheme).

:func:`plain_forward` is the floor: the given tokens, no mask, no position ids, no hooks.
"""

from __future__ import annotations

import copy as copying
from collections.abc import Sequence

import torch

from interp.model import hooks as mh
from interp.model.kvcache import cache_kwarg, mark, new_cache, rollback

Rows = Sequence[tuple[Sequence[int], Sequence[int]]]


def _check_rows(rows: Rows) -> tuple[int, int]:
    if not rows:
        raise ValueError("no rows")
    lengths = {(len(p), len(r)) for p, r in rows}
    if len(lengths) != 1:
        raise ValueError(f"rows must share prompt and response lengths to batch without padding, got {lengths}")
    return lengths.pop()


class _SpanGrab:
    """One :class:`interp.model.hooks.Tap` per layer, armed to keep the last ``h`` positions of a forward."""

    def __init__(self, model, h: int):
        self.h = h
        self.taps = [mh.Tap(model, mh.resid_post(i)) for i in range(mh.n_layers(model))]

    def reading(self, on: bool) -> None:
        """Keep (``on``) or ignore the next forwards' span positions."""
        for tap in self.taps:
            if on:
                tap.arm(slice(-self.h, None))
            else:
                tap.armed = False

    def take(self) -> dict[int, torch.Tensor]:
        return {i: tap.value.float().cpu() for i, tap in enumerate(self.taps)}

    def remove(self) -> None:
        for tap in self.taps:
            tap.remove()


def _stack(per_depth: list[dict[int, torch.Tensor]]) -> dict[int, torch.Tensor]:
    return {layer: torch.stack([d[layer] for d in per_depth], 1) for layer in per_depth[0]} if per_depth else {}


@torch.no_grad()
def reencode(model, rows: Rows, span: Sequence[int], depths: Sequence[int]) -> dict[int, torch.Tensor]:
    """One plain causal forward per depth (depths past the response are skipped)."""
    _, R = _check_rows(rows)
    dev = next(model.parameters()).device
    grab, out = _SpanGrab(model, len(span)), []
    grab.reading(True)
    try:
        for d in (d for d in depths if d <= R):
            ids = torch.tensor([list(p) + list(r[:d]) + list(span) for p, r in rows], device=dev)
            mh.body(model)(input_ids=ids, use_cache=False)
            out.append(grab.take())
    finally:
        grab.remove()
    return _stack(out)


@torch.no_grad()
def ada_scheme(model, rows: Rows, span: Sequence[int], depths: Sequence[int], *, copy: bool = True
               ) -> dict[int, torch.Tensor]:
    """Grow a KV cache through the responses; at each depth forward the span on a deep copy (``copy``) or on
    the cache itself followed by an exact rollback."""
    P, R = _check_rows(rows)
    B, h = len(rows), len(span)
    dev = next(model.parameters()).device
    base, kw = mh.body(model), cache_kwarg(mh.body(model))
    span_ids = torch.tensor([list(span)] * B, device=dev)
    cache = new_cache(model)
    grab = _SpanGrab(model, h)
    try:
        # the taps start disarmed: the prompt and response chunks are not read
        base(input_ids=torch.tensor([list(p) for p, _ in rows], device=dev), use_cache=True, **{kw: cache})
        done, out = 0, []
        for d in (d for d in depths if d <= R):
            if d > done:
                chunk = torch.tensor([list(r[done:d]) for _, r in rows], device=dev)
                pos = torch.arange(P + done, P + d, device=dev).expand(B, -1)
                grab.reading(False)
                base(input_ids=chunk, position_ids=pos, use_cache=True, **{kw: cache})
                done = d
            pos = torch.arange(P + d, P + d + h, device=dev).expand(B, -1)
            grab.reading(True)
            if copy:
                fork = copying.deepcopy(cache)
                base(input_ids=span_ids, position_ids=pos, use_cache=True, **{kw: fork})
                del fork
            else:
                before = mark(cache)
                base(input_ids=span_ids, position_ids=pos, use_cache=True, **{kw: cache})
                rollback(cache, before)
            out.append(grab.take())
    finally:
        grab.remove()
    return _stack(out)


@torch.no_grad()
def plain_forward(model, input_ids: torch.Tensor) -> None:
    """The given tokens through the decoder stack: no mask, no position ids, no hooks, no cache."""
    mh.body(model)(input_ids=input_ids, use_cache=False)
