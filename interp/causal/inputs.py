"""Examples and single-depth batches for the causal experiments: ``prompt ‖ response[:d] ‖ span``.

The span after ``d`` response tokens is what the packed extraction reads for depth ``d`` (there the span copy
sees ``prompt ‖ response[:d]`` and itself); here :func:`interp.extract.masks.plan_packed` lays it out with the response
cut at ``d`` (one plain causal sequence per example) so that hooks can edit positions without a tree mask. Rows
are left-padded so the span is the last ``h`` columns of every row; a row whose response is shorter than ``d``
is left out (never duplicated), as in the extraction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from interp import UserError
from interp.extract.masks import additive_masks, left_pad, plan_packed
from interp.model.hooks import Inputs
from interp.spans.derive import SafetySpans

HARMFUL, BENIGN = "harmful", "benign"


@dataclass(frozen=True)
class Example:
    """One tokenised prompt (chat-formatted through the header) and response, with its label."""

    id: str
    label: str
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    source: str = ""
    group: str = ""  # prompt group (:func:`interp.probes.groups.content_groups`); default: the prompt's tokens


def example_groups(examples: Sequence[Example]) -> list[str]:
    """The unit every causal interval resamples: each example's prompt group (its prompt tokens when unset)."""
    return [e.group or hashlib.sha256(str(e.prompt_ids).encode()).hexdigest()[:16] for e in examples]


@dataclass
class SpanBatch:
    """A left-padded batch of ``prompt ‖ response[:depth] ‖ span`` rows: the span is the last ``h`` columns.

    Left padding puts the span in the same columns of every row, so an edit or a readout at span offset ``j``
    is column ``j - h`` (counted from the end) both in the full forward (``[B, S, d]`` sites) and in the
    span-only forward over a cached prefix (``[B, h, d]`` sites); see :mod:`interp.causal.runner`. Position ids
    count real tokens only (``cumsum(mask) - 1``), so padding never shifts a row's positions.
    """

    inputs: Inputs
    examples: list[Example]
    depth: int
    span_ids: tuple[int, ...]
    cont_start: torch.Tensor  # [B] column of the first response token (pad + prompt length)
    lengths: torch.Tensor     # [B] real length of each row (P + depth + h)
    probe_index: int = 0      # index of the probe (role) token in the span
    prompt_suffix_len: int | None = None  # template tokens after the user's text (t_inst), when known

    @property
    def h(self) -> int:
        return len(self.span_ids)

    @property
    def width(self) -> int:
        return int(self.inputs.input_ids.shape[1])

    @property
    def prefix_width(self) -> int:
        """Columns before the span (left padding + prompt + response[:depth])."""
        return self.width - self.h

    @property
    def span_pos(self) -> torch.Tensor:
        """``[B, h]`` columns of the span tokens in the full sequence (the same for every row)."""
        return (self.prefix_width + torch.arange(self.h))[None, :].expand(len(self.examples), -1)

    @property
    def probe_pos(self) -> torch.Tensor:
        return self.span_pos[:, self.probe_index]

    @property
    def last_pos(self) -> torch.Tensor:
        """Column whose logits predict the first token after the header."""
        return self.span_pos[:, -1]

    @property
    def rows(self) -> torch.Tensor:
        return torch.arange(len(self.examples))


def split_by_prompt(examples: Sequence[Example], fraction: float, seed: int = 0
                    ) -> tuple[list[Example], list[Example]]:
    """``(select, measure)``: about ``fraction`` of each label's prompts (all rows of a prompt on one side,
    seeded) to choose features or directions on, the rest to measure their effect on. ``fraction == 0``: both
    are every example (selection and measurement in-sample)."""
    if not 0 <= fraction < 1:
        raise UserError(f"--select-fraction must lie in [0, 1), got {fraction}")
    if fraction == 0:
        return list(examples), list(examples)
    chosen: set[tuple] = set()
    for label in (HARMFUL, BENIGN):
        prompts = sorted({e.prompt_ids for e in examples if e.label == label},
                         key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
        k = round(fraction * len(prompts))
        if not 2 <= k <= len(prompts) - 2:
            raise UserError(f"--select-fraction {fraction} leaves fewer than 2 {label} prompts on one side "
                            f"({len(prompts)} {label} prompts); use more examples or --select-fraction 0")
        chosen.update(prompts[:k])
    return [e for e in examples if e.prompt_ids in chosen], [e for e in examples if e.prompt_ids not in chosen]


def build_batch(examples: Sequence[Example], depth: int, span: SafetySpans, pad_id: int) -> SpanBatch | None:
    """The batch for ``depth`` over the examples long enough for it (``None`` if none is); ``span`` gives the
    re-injected ids (``span_ids``) and the probe token (``probe_index``)."""
    kept = [ex for ex in examples if len(ex.response_ids) >= depth]
    if not kept:
        return None
    # The injection routine with the response cut at ``depth``: one copy, contiguous positions, plain causal.
    seqs = [list(plan_packed(ex.prompt_ids, ex.response_ids[:depth], span.span_ids, [depth]).input_ids) for ex in kept]
    ids, mask, pos = left_pad(seqs, pad_id)
    width = ids.shape[1]
    lengths = mask.sum(1)
    cont_start = (width - lengths) + torch.tensor([len(ex.prompt_ids) for ex in kept])
    return SpanBatch(Inputs(ids, mask, pos), kept, depth, tuple(span.span_ids), cont_start, lengths, span.probe_index)


def label_batch(examples: Sequence[Example], label: str, depth: int, span: SafetySpans, pad_id: int) -> SpanBatch | None:
    """:func:`build_batch` over the examples of one label."""
    return build_batch([e for e in examples if e.label == label], depth, span, pad_id)


def response_columns(batch: SpanBatch) -> torch.Tensor:
    """``[B, S]`` bool: the columns holding ``response[:depth]``."""
    cols = torch.arange(batch.width)[None, :]
    return (cols >= batch.cont_start[:, None]) & (cols < batch.cont_start[:, None] + batch.depth)


def knockout_inputs(batch: SpanBatch, dtype: torch.dtype = torch.float32, sliding_window: int | None = None,
                    layer_types: Sequence[str] | None = None) -> Inputs:
    """Full-sequence inputs whose 4-D mask stops every span token attending to the response (all layers).

    The reference for the cached path (which masks the response columns of the span forward instead). Rows
    stay causal over the prompt and the span; padding columns are masked, padding rows see themselves only.
    With ``sliding_window`` (from :func:`interp.extract.masks.attention_layout`) sliding layers also get the window
    (a ``{layer_type: mask}`` dict when the model names its layer types). With nothing to block (depth 0) the
    mask equals the plain causal + padding mask.
    """
    b, s = batch.inputs.input_ids.shape
    real = batch.inputs.attention_mask.bool()                          # [B, S]
    allowed = torch.tril(torch.ones(s, s, dtype=torch.bool))[None] & real[:, None, :]
    span_rows = torch.zeros(b, s, dtype=torch.bool)
    span_rows[:, batch.prefix_width:] = True
    allowed &= ~(span_rows[:, :, None] & response_columns(batch)[:, None, :])
    allowed |= torch.diag_embed(~real)                                 # padding rows see themselves
    pos = batch.inputs.position_ids
    mask = additive_masks(allowed, pos, pos, dtype, sliding_window, layer_types)
    return Inputs(batch.inputs.input_ids, mask, batch.inputs.position_ids)
