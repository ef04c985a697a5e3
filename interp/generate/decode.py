"""Continuous-batched decoding for building continuations (no guard): the batch never waits for its longest row.

``model.generate`` runs a batch until its last row stops, computing finished rows as padding all the while;
with answers of 20 to 512 tokens most of a batch's steps are then wasted. :func:`decode` keeps up to
``batch_size`` rows in flight: a row that stops leaves the batch at once (its cache rows are dropped), and the
next waiting prompt is prefilled and joins the batch (its cache left-padded to the batch's width, the padding
masked out, positions counted per row). On CPU float32 the few-row linears of a small batch go through
:mod:`interp.model.fast_linear`.

Every row is decoded as if alone: greedy picks the argmax; sampling draws from the row's own generator, seeded
by ``seed`` and the job's index, so a job's tokens do not depend on which other jobs share its batch.
Models with sliding-window layers (whose cache drops entries) are decoded in fixed batches instead.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from interp.extract.masks import left_pad
from interp.model import fast_linear
from interp.model.kvcache import cache_kwarg, concat_rows, drop_left, new_cache, select_rows, sliding_windows


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy, or temperature + nucleus sampling seeded per job."""

    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0


def nucleus_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Sampling distribution over the last dimension: softmax at ``temperature``, restricted to the smallest set
    of tokens holding ``top_p`` of the mass (unnormalised; ``torch.multinomial`` accepts that)."""
    probs = torch.softmax(logits.float() / max(temperature, 1e-6), dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
    return probs


def _choose(logits: torch.Tensor, jobs: list[int], sampling: Sampling, gens: dict[int, torch.Generator]
            ) -> list[int]:
    if not sampling.do_sample:
        return logits.argmax(-1).tolist()
    probs = nucleus_probs(logits, sampling.temperature, sampling.top_p).cpu()
    return [int(torch.multinomial(probs[row], 1, generator=gens[job])) for row, job in enumerate(jobs)]


def _drop_unused_columns(cache, mask: torch.Tensor) -> torch.Tensor:
    """Remove leading positions that every row masks out (left by rows that left the batch)."""
    used = mask.any(0).nonzero()
    start = int(used[0]) if len(used) else mask.shape[1]
    if start:
        drop_left(cache, start)
        mask = mask[:, start:]
    return mask


@torch.no_grad()
def decode(model, prompts: Sequence[Sequence[int]], budgets: Sequence[int], *, stops: Sequence[int], pad_id: int,
           batch_size: int = 8, sampling: Sampling | None = None, seeds: Sequence[int] | None = None,
           bar=None) -> list[list[int]]:
    """New tokens for each prompt (chat-formatted ids, a forced prefix included): at most ``budgets[i]``, ending
    with the first stop token if one came. When sampling, prompt ``i`` draws from a generator seeded with
    ``seeds[i]`` (default ``sampling.seed * 1_000_003 + i``). ``bar`` (a tqdm) advances once per finished prompt."""
    if len(prompts) != len(budgets):
        raise ValueError(f"{len(prompts)} prompts but {len(budgets)} budgets")
    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    sampling = sampling or Sampling()
    stop_set = {int(s) for s in stops}
    out: list[list[int]] = [[] for _ in prompts]
    waiting = deque(i for i, b in enumerate(budgets) if b > 0)
    if bar is not None:
        bar.update(len(prompts) - len(waiting))
    if seeds is None:
        seeds = [sampling.seed * 1_000_003 + i for i in range(len(prompts))]
    gens = {i: torch.Generator().manual_seed(int(seeds[i])) for i in waiting} if sampling.do_sample else {}
    device = next(model.parameters()).device
    kw = cache_kwarg(model)
    continuous = not any(w is not None for w in sliding_windows(new_cache(model)))
    installed = fast_linear.install(model)
    try:
        rows: list[int] = []  # job of each batch row
        cache = mask = last = pos = None  # per row: mask over the cache, the chosen token not yet forwarded, its position

        def record(job: int, tok: int) -> bool:
            """Append ``tok`` to ``job``; True when the job is done."""
            out[job].append(tok)
            done = tok in stop_set or len(out[job]) >= budgets[job]
            if done and bar is not None:
                bar.update(1)
            return done

        while waiting or rows:
            if waiting and len(rows) < batch_size and (continuous or not rows):  # prefill newcomers
                new = [waiting.popleft() for _ in range(min(batch_size - len(rows), len(waiting)))]
                ids, m, p = left_pad([prompts[j] for j in new], pad_id, device=device)
                c = new_cache(model)
                logits = model(input_ids=ids, attention_mask=m, position_ids=p, use_cache=True, logits_to_keep=1,
                               **{kw: c}).logits[:, -1]
                chosen = _choose(logits, new, sampling, gens)
                first = len(rows)
                if cache is None:
                    cache, mask, pos = c, m, m.sum(-1)
                    last = torch.tensor(chosen, device=device)
                else:
                    concat_rows(cache, c)
                    width = max(mask.shape[1], m.shape[1])
                    mask = torch.cat([F.pad(mask, (width - mask.shape[1], 0)), F.pad(m, (width - m.shape[1], 0))])
                    last = torch.cat([last, torch.tensor(chosen, device=device)])
                    pos = torch.cat([pos, m.sum(-1)])
                rows = rows + new
                done = {first + k for k, (j, t) in enumerate(zip(new, chosen)) if record(j, t)}
            else:  # one decode step for every row in flight
                mask = torch.cat([mask, mask.new_ones(len(rows), 1)], 1)
                logits = model(input_ids=last[:, None], position_ids=pos[:, None], attention_mask=mask,
                               use_cache=True, logits_to_keep=1, **{kw: cache}).logits[:, -1]
                chosen = _choose(logits, rows, sampling, gens)
                last, pos = torch.tensor(chosen, device=device), pos + 1
                done = {r for r, (j, t) in enumerate(zip(rows, chosen)) if record(j, t)}
            if done:  # finished rows leave the batch
                keep = [r for r in range(len(rows)) if r not in done]
                if not keep:
                    rows, cache = [], None
                    continue
                idx = torch.tensor(keep, device=device)
                select_rows(cache, idx)
                rows = [rows[r] for r in keep]
                last, pos, mask = last[idx], pos[idx], mask[idx]
                if continuous:
                    mask = _drop_unused_columns(cache, mask)
    finally:
        if installed:
            fast_linear.uninstall(model)
    return out
