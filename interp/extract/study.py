"""The position study's reads in a packed forward (``anydepth extract --controls true``): each control span of
:mod:`interp.spans.controls` at every depth, the mean over the response so far and the last instruction token.

The control copies are laid out and masked by :func:`interp.extract.masks.plan_packed` like the header's; here
they are read from a site tensor, beside :func:`interp.extract.packed.gather_rows`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from interp import UserError
from interp.extract.masks import PackedBatch

PER_ROW_READS = ("response_mean", "t_inst")  # stored after the control spans


def study_positions(controls) -> list[str]:
    """The names a store extracted with ``controls`` holds under ``/positions``."""
    return [*controls.names, *PER_ROW_READS]


def control_spans(controls) -> list[tuple[int, ...]]:
    """The control spans to pack, in :attr:`ControlSpans.names` order (none without controls)."""
    return [] if controls is None else [controls.spans[name] for name in controls.names]


def check_suffix(items: Sequence, controls) -> None:
    """Every prompt must end with the template's suffix, or its last instruction token is not defined."""
    bad = [it.id for it in items if controls.t_inst(it.prompt_ids) is None]
    if bad:
        raise UserError(f"{len(bad)} prompt(s) (e.g. {bad[0]!r}) do not end with the chat template's tokens after the "
                        "user's text, so their last instruction token is unknown; extract them without --controls")


def response_mean(x: torch.Tensor, b: PackedBatch) -> torch.Tensor:
    """``[B, D, d]``: the mean of ``x`` over the response tokens before each depth (zero at depth 0 and where a
    depth is invalid), from one running sum over the prompt and response (float64)."""
    dev = x.device
    last = b.last_token_index.to(dev)  # [B, D]
    start = b.prompt_last_index.to(dev)[:, None]  # the last prompt token
    upto = int(last.max().clamp_min(0)) + 1
    cs = x[:, :upto].double().cumsum(1)
    rows = torch.arange(x.shape[0], device=dev)[:, None]
    n = (last - start).clamp_min(0)
    total = cs[rows, last.clamp_min(0)] - cs[rows, start]
    mean = total / n.clamp_min(1)[..., None]
    return (mean * ((n > 0) & b.valid.to(dev))[..., None]).to(x.dtype)


def gather_study(x: torch.Tensor, b: PackedBatch, controls) -> dict[str, torch.Tensor]:
    """The position study's reads of a site tensor ``x [B, S, d]`` by name: each control span at every depth
    ``[B, D, d]`` (``controls.read_offset`` tokens before its end), ``response_mean [B, D, d]`` and the last
    instruction token ``t_inst [B, d]`` (the prompt suffix's length before the prompt's end)."""
    dev = x.device
    rows = torch.arange(x.shape[0], device=dev)
    out = {}
    if b.control_last is not None:
        at = b.control_last.to(dev)  # [B, C, D]
        idx = (at - (controls.read_offset - 1)).clamp_min(0)
        vals = x[rows[:, None, None], idx] * (at >= 0)[..., None].to(x.dtype)  # [B, C, D, d]
        out.update({name: vals[:, c] for c, name in enumerate(controls.names)})
    out["response_mean"] = response_mean(x, b)
    out["t_inst"] = x[rows, b.prompt_last_index.to(dev) - len(controls.prompt_suffix_ids)]
    return out
