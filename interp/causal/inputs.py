"""Examples and single-depth batches for the causal experiments: ``prompt ‖ response[:d] ‖ span``.

The span after ``d`` response tokens is what the packed extraction reads for depth ``d`` (there the span copy
sees ``prompt ‖ response[:d]`` and itself); here :func:`interp.inject.plan_packed` lays it out with the response
cut at ``d`` (one plain causal sequence per example) so that hooks can edit positions without a tree mask. Rows are right-padded; a row whose response is shorter than ``d``
is left out (never duplicated), as in the extraction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from interp import UserError
from interp.causal.hooks import Inputs
from interp.inject import plan_packed

HARMFUL, BENIGN = "harmful", "benign"


@dataclass(frozen=True)
class Example:
    """One tokenised prompt (chat-formatted through the header) and response, with its label."""

    id: str
    label: str
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    source: str = ""


@dataclass(frozen=True)
class Span:
    """The re-injected span's in-context token ids and the index of the probe (role) token in it."""

    ids: tuple[int, ...]
    probe_index: int

    def __post_init__(self) -> None:
        if not self.ids or not 0 <= self.probe_index < len(self.ids):
            raise UserError(f"bad span: probe index {self.probe_index} outside span of {len(self.ids)} tokens")


@dataclass
class SpanBatch:
    """A right-padded batch of ``prompt ‖ response[:depth] ‖ span`` rows and where things are."""

    inputs: Inputs
    examples: list[Example]
    depth: int
    span_pos: torch.Tensor    # [B, h] positions of the span tokens
    cont_start: torch.Tensor  # [B] first response position (prompt length P)
    lengths: torch.Tensor     # [B] real length of each row
    probe_index: int = 0      # index of the probe (role) token in the span

    @property
    def probe_pos(self) -> torch.Tensor:
        return self.span_pos[:, self.probe_index]

    @property
    def last_pos(self) -> torch.Tensor:
        """Position whose logits predict the first token after the header."""
        return self.span_pos[:, -1]

    @property
    def rows(self) -> torch.Tensor:
        return torch.arange(len(self.examples))


def build_batch(examples: Sequence[Example], depth: int, span: Span, pad_id: int) -> SpanBatch | None:
    """The batch for ``depth`` over the examples long enough for it (``None`` if none is)."""
    kept = [ex for ex in examples if len(ex.response_ids) >= depth]
    if not kept:
        return None
    # The injection routine with the response cut at ``depth``: one copy, contiguous positions, plain causal.
    seqs = [list(plan_packed(ex.prompt_ids, ex.response_ids[:depth], span.ids, [depth]).input_ids) for ex in kept]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    h = len(span.ids)
    lengths = torch.tensor([len(s) for s in seqs])
    span_pos = (lengths - h)[:, None] + torch.arange(h)[None, :]
    cont_start = torch.tensor([len(ex.prompt_ids) for ex in kept])
    return SpanBatch(Inputs(ids, mask), kept, depth, span_pos, cont_start, lengths, span.probe_index)



def label_batch(examples: Sequence[Example], label: str, depth: int, span: Span, pad_id: int) -> SpanBatch | None:
    """:func:`build_batch` over the examples of one label."""
    return build_batch([e for e in examples if e.label == label], depth, span, pad_id)

def knockout_inputs(batch: SpanBatch, dtype: torch.dtype = torch.float32) -> Inputs:
    """Inputs whose 4-D mask stops every span token attending to the response tokens (all layers).

    Rows stay causal over the prompt and the span itself; padding columns are masked, padding rows see
    themselves only. With nothing to block (depth 0) the mask equals the plain causal + padding mask.
    """
    b, s = batch.inputs.input_ids.shape
    allowed = torch.tril(torch.ones(s, s, dtype=torch.bool)).expand(b, s, s).clone()
    cols = torch.arange(s)
    real = cols[None, :] < batch.lengths[:, None]                  # [B, S]
    allowed &= real[:, None, :]
    for i in range(b):
        lo, hi = int(batch.cont_start[i]), int(batch.cont_start[i]) + batch.depth
        allowed[i, batch.span_pos[i][:, None], cols[None, lo:hi]] = False
        pad_rows = cols[~real[i]]
        allowed[i, pad_rows, pad_rows] = True
    add = torch.zeros(b, 1, s, s, dtype=dtype)
    add.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    pos = (torch.arange(s)[None, :].expand(b, s)).clone()
    return Inputs(batch.inputs.input_ids, add, pos)


def tokenize_examples(tokenizer, records, prompt_ids_fn, response_ids_fn) -> list[Example]:
    """Turn records (``.id``, ``.label``, ``.prompt``, ``.response``) into :class:`Example` s.

    ``prompt_ids_fn(tokenizer, prompt)`` and ``response_ids_fn(tokenizer, prompt_ids, text)`` are the template
    helpers (``interp.templates.format_prompt_ids`` / ``encode_response``).
    """
    out = []
    for rec in records:
        if rec.response is None:
            raise UserError(f"record {rec.id!r} has no response; the causal experiments need continuations")
        p = tuple(int(t) for t in prompt_ids_fn(tokenizer, rec.prompt))
        r = tuple(int(t) for t in response_ids_fn(tokenizer, list(p), rec.response))
        out.append(Example(rec.id, rec.label, p, r, getattr(rec, "source", "")))
    return out
