"""ADA guard: streaming generation on the HF model's own KV cache with Safety-Token checks.

Every ``stride`` generated tokens (plus an optional early schedule) a check runs over the live cache
and the cache is rolled back exactly (:mod:`interp.model.kvcache`), so the stream is unchanged:
- ADA-LP forwards the probe span (``span_ids[:probe_index+1]``), reads the probe layer at the role
  token through a hook registered once, and scores it with a ``ProbeSet``; ``early_exit`` stops the
  forward after the probe layer; ``piggyback`` rides the span on the next decode step.
- ADA-RK forwards the whole re-injected span, greedily decodes ``lookahead`` tokens and applies a
  refusal matcher (keywords, or probability mass of refusal openers at the first position).
A row halts when its checks fire under the aggregation rule (:mod:`interp.guard.aggregate`: any flagged check
by default, k of the last n checks, or an EMA of scores), optionally emitting a refusal message; with ``buffer``
nothing reaches the caller before the check covering it has passed.

Forced tokens (teacher forcing, prefill attacks) are known in advance, so while every active row is
forced they are fed in one forward per stretch up to the next due check depth, the end of the
shortest forced run, a forced EOS or a limit (the row-wise minimum, so rows stay aligned and left
padding needs nothing new). The check then runs at exactly that depth, as a separate forward (a chunk
cannot carry a piggybacked span). ``chunk_forced=False`` keeps the one-token-per-step reference path.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from interp import UserError
from interp.extract.masks import left_pad, require_mask_kernel
from interp.generate.decode import greedy, nucleus_probs
from interp.guard import deferred
from interp.guard.aggregate import Aggregation, reaches
from interp.guard.checks import Checker, CheckOutcome
from interp.guard.openers import head_logits
from interp.guard.types import Callback, GuardConfig, GuardResult
from interp.model import fast_linear
from interp.model.kvcache import cache_kwarg, new_cache


class GuardedGenerator:
    """Batched guarded generation on a transformers causal LM (one instance per model + config)."""

    def __init__(self, model, tokenizer, spans, config: GuardConfig | None = None, probes=None, *,
                 model_id: str | None = None, weights_sha256: str | None = None,
                 detectors: Sequence[str] | None = None, halt: bool = True, base_lookahead: int | None = None,
                 chunk_forced: bool = True, per_answer: bool = True, prob_scores: bool = False,
                 defer_final_checks: bool = False):
        """``per_answer``: the run fires per answer on ``config``'s schedule (guarding, over-refusal), so warn
        when the probe set's threshold was calibrated for another schedule; False for per-depth measurements
        (deep-prefill curves). ``prob_scores``: score base / RK checks with the probability judge too (reports).
        ``defer_final_checks``: check rows that end between scheduled depths together after the loop
        (:mod:`interp.guard.deferred`; evaluations: the same checks, one batch instead of one per ending row)."""
        self.config = config = config or GuardConfig()
        self.defer_final_checks = defer_final_checks
        self.chunk_forced = chunk_forced  # False: feed forced tokens one per step (the reference path)
        config.validate()
        if config.piggyback:
            require_mask_kernel(model, "--piggyback")
        self.model, self.tokenizer = model, tokenizer
        self.halt = halt
        self.detectors = tuple(detectors) if detectors is not None else (
            () if config.mode == "none" else (config.mode,))
        self.checker = Checker(model, tokenizer, spans, config, probes if "lp" in self.detectors else None,
                               model_id=model_id, weights_sha256=weights_sha256, base_lookahead=base_lookahead,
                               prob_scores=prob_scores)
        mismatch = probes.schedule_mismatch(config) if (
            per_answer and "lp" in self.detectors and hasattr(probes, "schedule_mismatch")) else None
        if mismatch and config.threshold is None:
            warnings.warn(mismatch, stacklevel=2)
        self.rule = Aggregation.of(config)  # when a row's checks make it fire (default: any flagged check)
        self._cache_kw, self._cache_kw_body = cache_kwarg(model), cache_kwarg(self.checker.base)
        # True while this generator routes the model's few-row linears through interp.model.fast_linear
        self.fast_linear_installed = config.fast_linear and fast_linear.install(model)
        self.eos_ids = self._eos_ids()
        head = model.get_output_embeddings()
        self.vocab, self.logits_dtype = head.weight.shape[0], head.weight.dtype
        limit = getattr(model.config, "max_position_embeddings", None)
        self.max_context = config.max_context or limit or 1 << 30

    def _eos_ids(self) -> set[int]:
        ids = set()
        for src in (self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            if isinstance(src, int):
                ids.add(src)
            elif src:
                ids.update(int(x) for x in src)
        return ids

    def __enter__(self) -> GuardedGenerator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.checker.close()
        if self.fast_linear_installed:
            fast_linear.uninstall(self.model)
            self.fast_linear_installed = False

    # -- decoding ------------------------------------------------------------------------------------
    def _choose(self, logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        cfg = self.config
        if not cfg.do_sample:
            return greedy(logits)
        probs = nucleus_probs(logits, cfg.temperature, cfg.top_p)
        return torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(logits.device)

    def _next_due(self, depth: int) -> int:
        """Smallest check depth after ``depth`` (a huge number when nothing is ever checked)."""
        if not self.detectors:
            return 1 << 62
        cfg = self.config
        later = [d for d in cfg.early_checks if d > depth]
        return min([(depth // cfg.stride + 1) * cfg.stride, *later])

    def _due_rows(self, rows: list[int], ending: Sequence[int], checked: list[int], depth: int) -> list[int]:
        """Rows checked at ``depth``: all of them on a scheduled depth, else the ``ending`` rows whose tail is
        unchecked (final check). The check's forward covers the whole batch, but only these rows get its
        outcome, so each answer is checked on its own schedule (:class:`interp.probes.protocol.Schedule`)
        whatever else is in the batch."""
        if not self.detectors:
            return []
        if self.config.is_due(depth):
            return list(rows)
        return [b for b in ending if self.config.final_check and checked[b] < depth] if depth > 0 else []

    def _forced_run(self, rows: list[int], forced: list[list[int]], depth: int, prompt_len: int) -> int:
        """How many tokens from ``depth`` every row in ``rows`` has forced, before anything else must happen.

        Stops at the next due check, the shortest forced run, a forced EOS (that step ends its row) and
        the first step the step path would treat as at a limit, so a chunk never skips a decision.
        """
        end = min(len(forced[b]) for b in rows)
        end = min(end, self._next_due(depth), self.config.max_new_tokens,
                  self.max_context - self.checker.room - prompt_len)
        for b in rows:
            for i in range(depth, end):
                if forced[b][i] in self.eos_ids:
                    end = i
                    break
        return max(0, end - depth)

    def _defer(self, pending: list, due: list[int], depth: int, cache, mask, pos_next, logits,
               reasons: dict[int, str]) -> set[int]:
        """Keep the final checks of ``due`` for after the loop (:mod:`interp.guard.deferred`) when that is on and
        ``depth`` is no scheduled depth; returns the rows kept (their check and their end wait)."""
        if not (self.defer_final_checks and due and not self.config.is_due(depth) and deferred.can_defer(cache)):
            return set()
        for b in due:
            pending.append(deferred.snapshot(cache, b, mask, pos_next[b], logits, depth, reasons[b]))
        return set(due)

    def _forward(self, ids, pos, mask, cache, logits_to_keep=1, need: list[int] | None = None):
        """Next-token logits ``[B, 1, V]`` after ``ids``; with ``need`` only those rows go through the LM head (the
        others' logits are zeros that nothing reads: rows whose next token is forced, rows that finished)."""
        if need is None or len(need) == ids.shape[0]:
            out = self.model(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=True,
                             logits_to_keep=logits_to_keep, **{self._cache_kw: cache})
            return out.logits
        hidden = self.checker.base(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=True,
                                   **{self._cache_kw_body: cache}).last_hidden_state[:, -1:]
        logits = hidden.new_zeros(ids.shape[0], 1, self.vocab, dtype=self.logits_dtype)
        if need:
            logits[need] = head_logits(self.model, hidden[need]).to(self.logits_dtype)
        return logits

    def _need_logits(self, rows: list[int], forced: list[list[int]], depth: int, width: int) -> list[int] | None:
        """Active rows whose logits at ``depth`` something reads (None: every row): a free or ending row, a forced
        EOS (its final check), every row at a scheduled check or a limit. A row whose next token is forced and
        is not checked there skips the LM head (``config.skip_forced_head``)."""
        cfg = self.config
        if not cfg.skip_forced_head or (self.detectors and cfg.is_due(depth)) or depth >= cfg.max_new_tokens or (
                width + 1 + self.checker.room > self.max_context):
            return None
        return [b for b in rows if depth >= len(forced[b]) or forced[b][depth] in self.eos_ids]

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], forced: Sequence[Sequence[int]] | None = None,
                 forced_only: bool = False, on_event: Callback | None = None,
                 cancelled: Callable[[], Collection[int]] | None = None) -> list[GuardResult]:
        """Generate for each prompt (token ids, chat-formatted through the header) under the guard.

        ``forced[b]`` tokens are used instead of the model's choice while they last (teacher forcing /
        prefill attacks); with ``forced_only`` a row stops (reason ``forced_end``) when they run out.
        ``cancelled()``, asked before every step, names rows to stop now (reason ``cancelled``, nothing more
        released); generation returns as soon as no row is left.
        """
        loop = self._start(prompts, forced)
        rows = _Rows(prompts, self, on_event or (lambda *a: None))
        while True:
            rows.cancel(cancelled() if cancelled is not None else ())
            live = rows.live()
            if not live:
                break
            if self._at_limit(loop):
                self._stop_at_limit(loop, rows, live)
                break
            run = self._forced_run(live, loop.forced, loop.depth, loop.prompt_len) if self.chunk_forced else 0
            if run >= 2:  # one forward for the whole forced stretch (a single token takes the step path)
                if not self._forced_chunk(loop, rows, live, run):
                    break
                continue
            self._step(loop, rows, live, forced_only)
        self._run_pending(loop, rows)
        return self._finish_texts(rows.results)

    def _start(self, prompts: Sequence[Sequence[int]], forced: Sequence[Sequence[int]] | None) -> _Loop:
        """Check the prompts, left-pad them and prefill the cache: the loop's state at depth 0."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise UserError("empty prompt: every prompt needs at least one token")
        device = next(self.model.parameters()).device
        lens = torch.tensor([len(p) for p in prompts], device=device)
        P = int(lens.max())
        if P + 1 + self.checker.room > self.max_context:
            raise UserError(f"prompt of {P} tokens leaves no room in the context of {self.max_context}")
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids, mask, pos = left_pad(prompts, pad, device=device)
        cache = new_cache(self.model)
        logits = self._forward(ids, pos, mask, cache)[:, -1]
        forced = [list(f) for f in forced] if forced is not None else [[] for _ in prompts]
        return _Loop(cache, mask, logits, lens, P, int(pad), device, forced,
                     torch.Generator().manual_seed(self.config.seed))

    def _at_limit(self, loop: _Loop) -> bool:
        return (loop.depth >= self.config.max_new_tokens
                or loop.mask.shape[1] + 1 + self.checker.room > self.max_context)

    def _check(self, loop: _Loop, rows: _Rows, due: list[int]) -> None:
        """Run the detectors on the live cache at the loop's depth and give ``due`` rows the outcome."""
        rows.apply(self.checker.run(loop.cache, loop.mask, loop.pos, self.detectors, loop.logits), due, loop.depth)

    def _stop_at_limit(self, loop: _Loop, rows: _Rows, live: list[int]) -> None:
        """Every live row stops at ``max_new_tokens`` or the context limit, after its final check."""
        depth = loop.depth
        reason = "max_new_tokens" if depth >= self.config.max_new_tokens else "context_limit"
        due = self._due_rows(live, live, rows.checked, depth)
        held = self._defer(loop.pending, due, depth, loop.cache, loop.mask, loop.pos, loop.logits,
                           dict.fromkeys(due, reason))
        if due and not held:
            self._check(loop, rows, due)
        for b in live:
            if rows.active[b]:
                rows.active[b] = False
                if b not in held:
                    rows.finish(b, reason)

    def _forced_chunk(self, loop: _Loop, rows: _Rows, live: list[int], run: int) -> bool:
        """Feed the next ``run`` forced tokens of every live row in one forward (after the check due at this
        depth, if any); False when that check stopped every row."""
        cfg, depth, B = self.config, loop.depth, len(loop.forced)
        if self.detectors and cfg.is_due(depth):
            self._check(loop, rows, live)
            live = [b for b in live if rows.active[b]]
            if not live:
                return False
        ids = torch.full((B, run), loop.pad, dtype=torch.long, device=loop.device)
        for b in live:
            ids[b] = torch.tensor(loop.forced[b][depth:depth + run], device=loop.device)
        loop.mask = torch.cat([loop.mask, torch.ones((B, run), dtype=loop.mask.dtype, device=loop.device)], dim=1)
        pos = loop.pos[:, None] + torch.arange(run, device=loop.device)[None]
        need = self._need_logits(live, loop.forced, depth + run, loop.mask.shape[1])
        loop.logits = self._forward(ids, pos, loop.mask, loop.cache, need=need)[:, -1]
        for b in live:
            rows.results[b].generated_ids.extend(loop.forced[b][depth:depth + run])
            if not (cfg.buffer and self.detectors):
                rows.release(b, depth + run)
        loop.depth += run
        return True

    def _next_tokens(self, loop: _Loop, live: list[int], forced_only: bool) -> tuple[torch.Tensor, list[int]]:
        """Each row's next token (forced, or chosen from the logits) and the rows that end here."""
        depth, forced = loop.depth, loop.forced
        # forced steps draw nothing from the sampler, so chunked and stepwise streams agree
        free = any(depth >= len(forced[b]) and not forced_only for b in live)
        nxt = self._choose(loop.logits, loop.rng) if free else torch.full(
            (len(forced),), loop.pad, dtype=torch.long, device=loop.device)
        ending = []
        for b in live:
            if depth < len(forced[b]):
                nxt[b] = forced[b][depth]
            elif forced_only:
                ending.append(b)
                continue
            if int(nxt[b]) in self.eos_ids:
                ending.append(b)
        return nxt, ending

    def _step(self, loop: _Loop, rows: _Rows, live: list[int], forced_only: bool) -> None:
        """One token for every live row: the checks due at this depth, the decode step, the rows that end."""
        cfg, depth, B = self.config, loop.depth, len(loop.forced)
        nxt, ending = self._next_tokens(loop, live, forced_only)

        def reason(b: int) -> str:
            return "forced_end" if depth >= len(loop.forced[b]) and forced_only else "eos"

        due = self._due_rows(live, ending, rows.checked, depth)
        held = self._defer(loop.pending, due, depth, loop.cache, loop.mask, loop.pos, loop.logits,
                           {b: reason(b) for b in due})
        due = [b for b in due if b not in held]
        step_mask = torch.cat([loop.mask, torch.ones((B, 1), dtype=loop.mask.dtype, device=loop.device)], dim=1)
        if len(ending) == len(live):  # every row stops here: check, but decode nothing
            if due:
                self._check(loop, rows, due)
        elif due and cfg.piggyback:
            loop.logits, outcome = self.checker.piggyback(loop.cache, loop.mask, loop.pos, nxt, self.detectors)
            rows.apply(outcome, due, depth)
        else:
            if due:
                self._check(loop, rows, due)
            going = [b for b in live if b not in ending]
            need = self._need_logits(going, loop.forced, depth + 1, step_mask.shape[1])
            loop.logits = self._forward(nxt[:, None], loop.pos[:, None], step_mask, loop.cache, need=need)[:, -1]
        loop.mask = step_mask
        for b in live:
            if not rows.active[b]:
                continue
            if b in ending:
                rows.active[b] = False
                if b not in held:
                    rows.finish(b, reason(b))
                continue
            rows.results[b].generated_ids.append(int(nxt[b]))
            if not (cfg.buffer and self.detectors):
                rows.release(b, depth + 1)
        loop.depth += 1

    def _run_pending(self, loop: _Loop, rows: _Rows) -> None:
        """The final checks kept back during the loop, as one batch; their rows end after them."""
        if not loop.pending:
            return
        cache, mask, pos, logits = deferred.stack(loop.pending, self.model)
        outcome = self.checker.run(cache, mask, pos, self.detectors, logits)
        for i, p in enumerate(loop.pending):
            rows.apply(outcome, [p.row], p.depth, at={p.row: i})
            if not rows.results[p.row].halted:
                rows.finish(p.row, p.reason)

    def _finish_texts(self, results: list[GuardResult]) -> list[GuardResult]:
        """Each result's emitted text, with the refusal message after a halt."""
        for r in results:
            r.text = self.tokenizer.decode(r.emitted_ids, skip_special_tokens=True)
            if r.halted and self.config.refusal_message:
                r.text = (r.text + ("\n" if r.text else "") + self.config.refusal_message)
        return results


@dataclass
class _Loop:
    """The batch's state between steps: the cache, its mask, the last logits, the depth reached."""

    cache: Any
    mask: torch.Tensor
    logits: torch.Tensor
    lens: torch.Tensor  # prompt lengths
    prompt_len: int  # the longest prompt (the left-padded width)
    pad: int
    device: torch.device
    forced: list[list[int]]
    rng: torch.Generator
    depth: int = 0
    pending: list[deferred.PendingCheck] = field(default_factory=list)  # final checks kept for after the loop

    @property
    def pos(self) -> torch.Tensor:
        """Each row's position of the next token."""
        return self.lens + self.depth


class _Rows:
    """Per-row state of one :meth:`GuardedGenerator.generate` call: the results, which rows still run, the depth
    each row's last passed check covers, the aggregation rule's running state per detector, and the events."""

    def __init__(self, prompts: Sequence[Sequence[int]], gen: GuardedGenerator, emit: Callback):
        self.results = [GuardResult(prompt_ids=list(p)) for p in prompts]
        self.active = [True] * len(prompts)
        self.checked = [0] * len(prompts)
        self.streams: list[dict] = [{} for _ in prompts]
        self.rule, self.halt, self.emit = gen.rule, gen.halt, emit

    def live(self) -> list[int]:
        return [b for b, on in enumerate(self.active) if on]

    def cancel(self, rows: Collection[int]) -> None:
        for b in rows:
            if self.active[b]:
                self.active[b], self.results[b].stop_reason = False, "cancelled"

    def release(self, b: int, upto: int) -> None:
        """Hand row ``b``'s generated tokens up to ``upto`` to the caller."""
        r = self.results[b]
        new = r.generated_ids[len(r.emitted_ids):upto]
        if new:
            r.emitted_ids.extend(new)
            self.emit(b, "tokens", new)

    def finish(self, b: int, reason: str) -> None:
        self.active[b] = False
        self.results[b].stop_reason = reason
        if not self.results[b].halted:
            self.release(b, len(self.results[b].generated_ids))
        self.emit(b, "done", reason)

    def apply(self, outcome: CheckOutcome, rows: list[int], depth: int, at: dict[int, int] | None = None) -> None:
        """Record a check's events for ``rows`` (``at``: a row's index in the outcome's batch, default itself);
        a row whose checks reach the rule halts, the others release what the check covered."""
        for b in rows:
            fired = False
            i = b if at is None else at[b]
            for event in outcome.events(i, depth):
                stream = self.streams[b].setdefault(event.detector, self.rule.stream())
                value, limit = outcome.value(event.detector, i)
                event.fired = reaches(stream.push(value), limit)
                fired |= event.fired
                self.results[b].checks.append(event)
                self.emit(b, "check", event)
            if fired and self.halt:
                self.results[b].halted, self.results[b].halt_depth = True, depth
                self.emit(b, "halt", depth)
                self.finish(b, "halted")
            else:
                self.checked[b] = depth
                self.release(b, depth)
