"""The one forward path of the causal experiments: the prefix once into a KV cache, every run over the span only.

Every intervention (patching, knockout, direction ablation / steering, transcoder-feature edits) changes only
the span (the last ``h`` columns of a left-padded :class:`SpanBatch`) and every readout (refusal log-odds at
the last span token, probe scores at the probe token, site values at span tokens) is read there. By
causality ``prompt ‖ response[:d]`` is the same in the clean and every edited run, so :class:`SpanRunner`
forwards it once (``use_cache=True``), then forwards the ``h`` span tokens over that cache for each run and
rolls the cache back to the prefix afterwards (:func:`interp.model.kvcache.rollback`, no copy).

Positions for hooks are span offsets written as negative columns (``j - h``, see :func:`span_cols`): they
address the same tokens in the span-only site tensors ``[B, h, d]`` and in the full ones ``[B, S, d]``, so
the same hooks run on both paths. ``cached=False`` runs the whole sequence instead — the reference for the
exactness tests and the benchmark.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from interp import UserError
from interp.causal.inputs import SpanBatch, knockout_inputs, response_columns
from interp.causal.metrics import Probe, probe_logits, refusal_logodds
from interp.extract.masks import attention_layout, require_mask_kernel, span_over_cache
from interp.guard.openers import OpenerTree, opener_log_masses
from interp.model.hooks import HookFn, hf_model, hooks_attached, resid_post
from interp.model.kvcache import cache_kwarg, mark, new_cache, rollback

SiteFn = Callable[[int], str]


PREFIX_POSITIONS = ("last_token", "prompt", "t_inst")  # before the span: edited only in a whole-sequence forward
WHERE = ("probe", "span", *PREFIX_POSITIONS)


def prefix_col(batch: SpanBatch, where: str) -> int:
    """The column, counted from the end, of a position before the span: the last response token (the last prompt
    token at depth 0), the last prompt token (``prompt``) or the last instruction token (``t_inst``). Every row
    holds ``d`` response tokens and the span after its prompt, so the column is the same in every row."""
    h, d = batch.h, batch.depth
    if where == "last_token":
        return -h - 1
    if where == "prompt":
        return -h - d - 1
    if batch.prompt_suffix_len is None:
        raise UserError("t_inst needs the template's tokens after the user's text (prompt_suffix_len)")
    return -h - d - 1 - batch.prompt_suffix_len


def span_cols(batch: SpanBatch, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, columns counted from the end) of the probe token (``where="probe"``), the whole span (``"span"``)
    or one position before it (:data:`PREFIX_POSITIONS`, :func:`prefix_col`).

    The span's columns are negative (``-h … -1``), valid for site tensors of the full sequence and of the span
    alone; a prefix position's column exists only in the full sequence.
    """
    b, h = len(batch.examples), batch.h
    if where == "probe":
        return torch.arange(b), torch.full((b,), batch.probe_index - h, dtype=torch.long)
    if where == "span":
        return torch.arange(b).repeat_interleave(h), (torch.arange(h) - h).repeat(b)
    if where in PREFIX_POSITIONS:
        return torch.arange(b), torch.full((b,), prefix_col(batch, where), dtype=torch.long)
    if str(where).isdigit() and int(where) < h:  # one token of the span (ADA's token-choice ablation)
        return torch.arange(b), torch.full((b,), int(where) - h, dtype=torch.long)
    raise UserError(f"unknown position {where!r}; use one of {', '.join(WHERE)} or a span index 0..{h - 1}")


class SpanRunner:
    """Clean / hooked / knocked-out forwards of one batch, read at the span.

    ``cached=True`` (default): the prefix runs once, lazily, into a ``DynamicCache``; each :meth:`run` forwards
    only the span over it and rolls it back. ``cached=False``: each run forwards the whole sequence.
    """

    def __init__(self, model: torch.nn.Module, batch: SpanBatch, cached: bool = True) -> None:
        self.model = hf_model(model)
        self.batch = batch
        self.cached = cached
        param = next(self.model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self._cache = None
        self._mark = None
        self._cache_kw = cache_kwarg(self.model)
        self.capture_width = batch.h  # columns a capture keeps, counted from the end (more for prefix edits)

    def _to(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device)

    def _prefix(self):
        """The cache holding ``prompt ‖ response[:d]`` of every row (forwarded on first use)."""
        if self._cache is None:
            b, w = self.batch, self.batch.prefix_width
            cache = new_cache(self.model)
            inp = b.inputs
            self.model(input_ids=self._to(inp.input_ids[:, :w]), attention_mask=self._to(inp.attention_mask[:, :w]),
                       position_ids=self._to(inp.position_ids[:, :w]), use_cache=True, logits_to_keep=1,
                       **{self._cache_kw: cache})
            self._cache, self._mark = cache, mark(cache)
        return self._cache

    def _span_kwargs(self, knockout: bool) -> dict:
        b, w = self.batch, self.batch.prefix_width
        inp = b.inputs
        if not self.cached:
            if knockout:
                require_mask_kernel(self.model, "attention knockout (cached=False)")
                inp = knockout_inputs(b, self.dtype, *attention_layout(self.model.config))
            mask = inp.attention_mask
            mask = {k: self._to(v) for k, v in mask.items()} if isinstance(mask, dict) else self._to(mask)
            return {"input_ids": self._to(inp.input_ids), "attention_mask": mask,
                    "position_ids": self._to(inp.position_ids), "use_cache": False}
        prefix_mask = inp.attention_mask[:, :w]
        if knockout:  # the span's queries see the response columns as padding
            prefix_mask = prefix_mask.masked_fill(response_columns(b)[:, :w], 0)
        ids, pos, mask = span_over_cache(b.span_ids, prefix_mask, inp.position_ids[:, w])
        return {"input_ids": self._to(ids), "attention_mask": self._to(mask), "position_ids": self._to(pos),
                "use_cache": True, self._cache_kw: self._prefix()}

    @torch.no_grad()
    def run(self, hooks: dict[str, HookFn] | None = None, capture: Sequence[str] = (), knockout: bool = False,
            openers: OpenerTree | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict | None]:
        """Logits at the last span token ``[B, V]``, captured site values at the span ``[B, h, d]`` and, with
        ``openers``, the opener log-masses of the reply after the span (:func:`interp.guard.openers.opener_log_masses`).

        ``hooks`` see the site tensor of the forward that runs (span only, or the full sequence) and must
        address span tokens by negative columns (:func:`span_cols`); a capture is taken after any hook on
        the same site. ``knockout`` blocks the span's attention to the response tokens at every layer (the
        openers after the span see everything). The opener tree runs without the hooks, over the cache the
        hooked forward left (the whole sequence's own cache on the reference path).
        """
        h = self.capture_width if not self.cached else self.batch.h
        captured: dict[str, torch.Tensor] = {}

        def saver(name: str) -> HookFn:
            def fn(x: torch.Tensor) -> None:
                captured[name] = x[:, -h:].detach().clone()
            return fn

        items = list((hooks or {}).items()) + [(name, saver(name)) for name in capture]
        kwargs = self._span_kwargs(knockout)
        if openers is not None and not self.cached:
            kwargs.update(use_cache=True, **{self._cache_kw: new_cache(self.model)})
        masses = None
        try:
            with hooks_attached(self.model, items):
                out = self.model(**kwargs, logits_to_keep=1)
            logits = out.logits[:, -1]
            if openers is not None:
                inp = self.batch.inputs
                cache = kwargs[self._cache_kw]
                masses = opener_log_masses(self.model, cache, self._to(inp.attention_mask),
                                           self._to(inp.position_ids[:, -1] + 1), logits, openers)
        finally:
            if self.cached:
                rollback(self._cache, self._mark)
        return logits, captured, masses


@dataclass
class Readout:
    """Per-row refusal log-odds and probe scores (by probe layer) of one forward; captures at the span."""

    refusal: torch.Tensor
    probe: dict[int, torch.Tensor] = field(default_factory=dict)
    cache: dict[str, torch.Tensor] = field(default_factory=dict)


def read(runner: SpanRunner, openers: OpenerTree | None, probe: Probe | None = None,
         probe_layers: Sequence[int] = (), probe_site: SiteFn = resid_post,
         hooks: dict[str, HookFn] | None = None, capture: Sequence[str] = (), knockout: bool = False) -> Readout:
    """One (optionally hooked / knocked-out) run and its readout at the span.

    Without ``openers`` the refusal readout is empty (capture-only runs). ``cache`` values are ``[B, h, d]``.
    """
    sites = tuple(dict.fromkeys([*capture, *(probe_site(L) for L in probe_layers)]))
    _, cache, masses = runner.run(hooks, sites, knockout, openers)
    refusal = refusal_logodds(masses) if masses is not None else torch.zeros(0)
    out = Readout(refusal, cache=cache)
    if probe is not None:
        rows, cols = span_cols(runner.batch, "probe")
        for L in probe_layers:
            out.probe[L] = probe_logits(probe, cache[probe_site(L)][rows, cols], L)
    return out
