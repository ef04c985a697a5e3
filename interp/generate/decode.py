"""Continuous-batched decoding for building continuations (no guard): the batch never waits for its longest row.

``model.generate`` runs a batch until its last row stops, computing finished rows as padding all the while;
with answers of 20 to 512 tokens most of a batch's steps are then wasted. :func:`decode` keeps up to
``batch_size`` rows in flight: a row that stops leaves the batch at once (its cache rows are dropped), and the
next waiting prompt is prefilled and joins the batch (its cache left-padded to the batch's width, the padding
masked out, positions counted per row). Newcomers are prefilled in forwards of at most :func:`prefill_budget`
padded tokens. On CPU float32 the few-row linears of a small batch go through :mod:`interp.model.fast_linear`.

Every row is decoded as if alone: greedy picks the argmax; sampling draws from the row's own generator, seeded
by ``seed`` and the job's index, so a job's tokens do not depend on which other jobs share its batch.
Models with sliding-window layers (whose cache drops entries) are decoded in fixed batches instead.
"""

from __future__ import annotations

import time
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from interp.extract.masks import left_pad
from interp.generate.slots import SlotDecoder, greedy, slot_support
from interp.memory import available_memory
from interp.model import fast_linear
from interp.model.kvcache import cache_kwarg, concat_rows, drop_left, new_cache, select_rows, sliding_windows
from interp.threads import LoadFollower


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy, or temperature + nucleus sampling seeded per job."""

    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0


@dataclass
class DecodeTrace:
    """Where a :func:`decode` run's time went (pass one as ``trace=``): each prefill's and each decode step's rows
    and seconds, in order. A step makes one token per row in flight, a prefill one per prompt it admits."""

    batch_size: int = 0
    engine: str = ""  # the engine that ran ("slots" or "cache"; "auto" resolved)
    prefills: list[tuple[int, float]] = field(default_factory=list)  # (prompts admitted, seconds)
    steps: list[tuple[int, float]] = field(default_factory=list)  # (rows in flight, seconds)

    def phases(self) -> dict[str, dict[str, float]]:
        """Seconds, calls and tokens of the prefills, of the steps with every row of the batch in flight
        (``full``) and of the steps with fewer (``partial``: before the batch fills, and the tail once no prompt
        waits)."""
        out = {"prefill": _phase(self.prefills)}
        out["full"] = _phase([s for s in self.steps if s[0] >= self.batch_size])
        out["partial"] = _phase([s for s in self.steps if s[0] < self.batch_size])
        return out

    def summary(self) -> str:
        """One line: the engine and rows in flight, then each phase's seconds, share of the traced time and tokens
        per second."""
        ph = self.phases()
        total = sum(p["seconds"] for p in ph.values()) or 1.0
        names = {"prefill": "prefills", "full": f"steps at {self.batch_size} rows", "partial": "steps at fewer rows"}
        head = f"{self.engine} engine, {self.batch_size} rows in flight: " if self.engine else ""
        return head + "; ".join(f"{names[k]}: {p['calls']:.0f} in {p['seconds']:.1f} s ({100 * p['seconds'] / total:.0f}%), "
                         f"{p['tokens'] / p['seconds'] if p['seconds'] else 0:.1f} tokens/s" for k, p in ph.items())


def _phase(entries: list[tuple[int, float]]) -> dict[str, float]:
    return {"calls": float(len(entries)), "seconds": float(sum(t for _, t in entries)),
            "tokens": float(sum(n for n, _ in entries))}


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
        return greedy(logits).tolist()
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


ENGINES = ("auto", "slots", "cache")


@torch.no_grad()
def decode(model, prompts: Sequence[Sequence[int]], budgets: Sequence[int], *, stops: Sequence[int], pad_id: int,
           batch_size: int = 8, sampling: Sampling | None = None, seeds: Sequence[int] | None = None,
           bar=None, engine: str = "auto", trace: DecodeTrace | None = None) -> list[list[int]]:
    """New tokens for each prompt (chat-formatted ids, a forced prefix included): at most ``budgets[i]``, ending
    with the first stop token if one came. When sampling, prompt ``i`` draws from a generator seeded with
    ``seeds[i]`` (default ``sampling.seed * 1_000_003 + i``). ``bar`` (a tqdm) advances once per finished prompt.

    ``engine``: ``"slots"`` decodes over a preallocated cache (:mod:`interp.generate.slots`, Llama and Qwen2
    models), ``"cache"`` through the model's forward and a ``DynamicCache``; ``"auto"`` picks slots where they run.
    The slot engine keeps fewer than ``batch_size`` rows in flight (a warning says so) where their cache would take
    more than :func:`slot_cache_budget`; ``"auto"`` takes the DynamicCache where not one row fits.
    ``trace``: a :class:`DecodeTrace` that records each prefill and step (rows, seconds)."""
    if len(prompts) != len(budgets):
        raise ValueError(f"{len(prompts)} prompts but {len(budgets)} budgets")
    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "slots" and (why := slot_support(model)):
        raise ValueError(f"engine 'slots' cannot run this model: {why}")
    jobs = _Jobs(prompts, budgets, {int(s) for s in stops}, sampling or Sampling(), seeds, bar, trace)
    chosen = default_engine(model) if engine == "auto" else engine
    if chosen == "slots":
        rows = _slot_rows(model, jobs, batch_size, explicit=engine == "slots")
        chosen, batch_size = ("slots", rows) if rows else ("cache", batch_size)
    if trace is not None:
        trace.batch_size, trace.engine = batch_size, chosen
    run = _decode_slots if chosen == "slots" else _decode_cache
    installed = fast_linear.install(model)
    try:
        with jobs.load:
            run(model, jobs, pad_id, batch_size)
    finally:
        if installed:
            fast_linear.uninstall(model)
    return jobs.out


def default_engine(model) -> str:
    """The engine ``engine="auto"`` decodes ``model`` with: ``slots`` where it runs, else ``cache``."""
    return "slots" if slot_support(model) is None else "cache"


SLOT_CACHE_FALLBACK = 4 << 30  # bytes the slot cache may take where the free memory cannot be read
SLOT_CACHE_SHARE = 0.5  # of the memory free when a decode starts


def slot_cache_budget(device: torch.device | str) -> int:
    """Bytes the slot engine's preallocated cache may take on ``device``: :data:`SLOT_CACHE_SHARE` of the memory
    free now (a CPU: ``MemAvailable`` and the cgroup's room; CUDA: the device's free memory), else
    :data:`SLOT_CACHE_FALLBACK`."""
    device = torch.device(device)
    free = (torch.cuda.mem_get_info(device)[0] if device.type == "cuda"
            else available_memory() if device.type == "cpu" else None)
    return SLOT_CACHE_FALLBACK if free is None else int(SLOT_CACHE_SHARE * free)


def _slot_rows(model, jobs: _Jobs, batch_size: int, explicit: bool) -> int:
    """Rows in flight the slot engine decodes with: ``batch_size``, or as many as :func:`slot_cache_budget` holds
    (a warning says so); 0 when not one row fits and the engine was not asked for by name (the caller then takes
    the DynamicCache engine, whose cache grows with its rows instead of being allocated up front).

    Falling back to that engine whenever the cache would pass a fixed 4 GiB made a 256-row corpus build of the 1.5B
    model take 49 instead of 15 min (its steps copy the growing cache; 2-core AMX Xeon, bf16)."""
    slots, capacity = _slot_shape(jobs, batch_size)
    if not slots:
        return batch_size
    device = next(model.parameters()).device
    budget, per_row = slot_cache_budget(device), SlotDecoder.cache_bytes(model, 1, capacity)
    fits = min(slots, budget // per_row)
    if fits < slots:
        what = (f"{slots} slots of {capacity} positions need {slots * per_row / 2**30:.1f} GiB, more than "
                f"{SLOT_CACHE_SHARE:.0%} of the free memory ({budget / 2**30:.1f} GiB)")
        if not fits and explicit:
            raise ValueError(f"engine 'slots' cannot decode one row: {what}")
        if fits:
            warnings.warn(f"decoding {fits} rows in flight instead of {batch_size}: {what}", stacklevel=3)
    return batch_size if fits == slots else fits


PREFILL_TOKENS_CPU = 4096  # padded tokens per prefill forward on a CPU (rows x the piece's longest prompt)


def prefill_budget(device: torch.device | str) -> int | None:
    """Padded tokens one prefill forward may take on ``device``: :data:`PREFILL_TOKENS_CPU` on a CPU, no limit on
    an accelerator. On a 2-core AMX CPU, 512 prompts of 38-48 tokens prefilled in one forward took 34-41 s, and in
    forwards of 32-64 prompts 17-19 s (bf16, the embedded model): past a few thousand tokens the activations leave
    the caches."""
    return PREFILL_TOKENS_CPU if torch.device(device).type == "cpu" else None


def prefill_pieces(lengths: Sequence[int], max_tokens: int | None) -> list[range]:
    """Consecutive runs of newcomers, each prefilled in one forward: at most ``max_tokens`` padded tokens (rows x
    the run's longest prompt), one row at least; ``None`` puts them all in one run."""
    if not lengths:
        return []
    if max_tokens is None:
        return [range(len(lengths))]
    pieces, start, longest = [], 0, 0
    for i, n in enumerate(lengths):
        if i > start and (i - start + 1) * max(longest, n) > max_tokens:
            pieces.append(range(start, i))
            start, longest = i, 0
        longest = max(longest, n)
    pieces.append(range(start, len(lengths)))
    return pieces


def _slot_shape(jobs: _Jobs, batch_size: int) -> tuple[int, int]:
    """``(slots, capacity)`` the slot engine needs for the waiting jobs: one slot per row in flight, room for the
    longest prompt plus its budget."""
    if not jobs.waiting:
        return 0, 0
    return (min(batch_size, len(jobs.waiting)),
            max(len(jobs.prompts[j]) + jobs.budgets[j] for j in jobs.waiting))


class _Jobs:
    """The prompts, their budgets and outputs so far, the waiting queue and the sampling state."""

    def __init__(self, prompts, budgets, stop_set, sampling: Sampling, seeds, bar,
                 trace: DecodeTrace | None = None):
        self.prompts, self.budgets, self.stop_set, self.sampling, self.bar = prompts, budgets, stop_set, sampling, bar
        self.trace = trace
        self.out: list[list[int]] = [[] for _ in prompts]
        self.waiting = deque(i for i, b in enumerate(budgets) if b > 0)
        if bar is not None:
            bar.update(len(prompts) - len(self.waiting))
        if seeds is None:
            seeds = [sampling.seed * 1_000_003 + i for i in range(len(prompts))]
        self.gens = ({i: torch.Generator().manual_seed(int(seeds[i])) for i in self.waiting}
                     if sampling.do_sample else {})
        self.load = LoadFollower()  # one thread fewer while another process keeps a core busy

    @contextmanager
    def timed(self, kind: str, rows: int, device: torch.device) -> Iterator[None]:
        """Record the block's seconds as one prefill (``kind="prefill"``) or step of ``rows`` rows in the trace."""
        if self.trace is None:
            yield
            return
        start = time.perf_counter()
        yield
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        (self.trace.prefills if kind == "prefill" else self.trace.steps).append((rows, time.perf_counter() - start))

    def take(self, n: int) -> list[int]:
        """The next ``n`` waiting jobs (fewer when fewer wait), shortest prompt first: prefill pieces of similar
        lengths pad less (the 1.5B pool's first 256 prompts, 12.6k tokens: 9 forwards in 84 s in arrival order, 5 in
        50 s sorted; bf16, 2-core AMX Xeon)."""
        new = [self.waiting.popleft() for _ in range(min(n, len(self.waiting)))]
        return sorted(new, key=lambda j: len(self.prompts[j]))

    def choose(self, logits: torch.Tensor, rows: list[int]) -> list[int]:
        return _choose(logits, rows, self.sampling, self.gens)

    def record(self, job: int, tok: int) -> bool:
        """Append ``tok`` to ``job``; True when the job is done."""
        self.out[job].append(tok)
        done = tok in self.stop_set or len(self.out[job]) >= self.budgets[job]
        if done and self.bar is not None:
            self.bar.update(1)
        return done


def _decode_slots(model, jobs: _Jobs, pad_id: int, batch_size: int) -> None:
    """Continuous batching over :class:`~interp.generate.slots.SlotDecoder` (rows keep slots ``0..n-1``)."""
    if not jobs.waiting:
        return
    device = next(model.parameters()).device
    slots, capacity = _slot_shape(jobs, batch_size)
    dec = SlotDecoder(model, slots=slots, capacity=capacity)
    rows: list[int] = []  # job of each slot
    last = torch.zeros(0, dtype=torch.long, device=device)  # per slot: the chosen token not yet forwarded
    while jobs.waiting or rows:
        jobs.load.tick()
        if jobs.waiting and len(rows) < batch_size:  # prefill newcomers, a few thousand tokens per forward
            new = jobs.take(batch_size - len(rows))
            chosen = []
            for piece in prefill_pieces([len(jobs.prompts[j]) for j in new], prefill_budget(device)):
                part = [new[i] for i in piece]
                with jobs.timed("prefill", len(part), device):
                    ids, m, p = left_pad([jobs.prompts[j] for j in part], pad_id, device=device)
                    chosen += jobs.choose(dec.prefill(ids, m, p), part)
            first = len(rows)
            rows = rows + new
            last = torch.cat([last, torch.tensor(chosen, device=device)])
            done = [first + k for k, (j, t) in enumerate(zip(new, chosen)) if jobs.record(j, t)]
        else:  # one decode step for every row in flight
            with jobs.timed("step", len(rows), device):
                if jobs.sampling.do_sample:
                    chosen = jobs.choose(dec.step(last), rows)
                else:  # the argmax without the full logits (interp.generate.slots.greedy_head)
                    chosen = dec.greedy_step(last).tolist()
            last = torch.tensor(chosen, device=device)
            done = [r for r, (j, t) in enumerate(zip(rows, chosen)) if jobs.record(j, t)]
        for r in sorted(done, reverse=True):  # the last row moves into a freed slot
            dec.remove(r)
            rows[r] = rows[-1]
            last[r] = last[-1]
            rows.pop()
            last = last[:-1]


def _decode_cache(model, jobs: _Jobs, pad_id: int, batch_size: int) -> None:
    """Continuous batching through the model's forward and a ``DynamicCache`` (any model; models with
    sliding-window layers, whose cache drops entries, in fixed batches)."""
    device = next(model.parameters()).device
    kw = cache_kwarg(model)
    continuous = not any(w is not None for w in sliding_windows(new_cache(model)))
    rows: list[int] = []  # job of each batch row
    cache = mask = last = pos = None  # per row: mask over the cache, the chosen token not yet forwarded, its position
    while jobs.waiting or rows:
        jobs.load.tick()
        if jobs.waiting and len(rows) < batch_size and (continuous or not rows):  # prefill newcomers
            new = jobs.take(batch_size - len(rows))
            first, chosen = len(rows), []
            budget = prefill_budget(device) if continuous else None  # a windowed cache cannot join pieces
            for piece in prefill_pieces([len(jobs.prompts[j]) for j in new], budget):
                part = [new[i] for i in piece]
                with jobs.timed("prefill", len(part), device):
                    ids, m, p = left_pad([jobs.prompts[j] for j in part], pad_id, device=device)
                    c = new_cache(model)
                    logits = model(input_ids=ids, attention_mask=m, position_ids=p, use_cache=True,
                                   logits_to_keep=1, **{kw: c}).logits[:, -1]
                    picked = jobs.choose(logits, part)
                chosen += picked
                if cache is None:
                    cache, mask, pos = c, m, m.sum(-1)
                    last = torch.tensor(picked, device=device)
                else:
                    concat_rows(cache, c)
                    width = max(mask.shape[1], m.shape[1])
                    mask = torch.cat([F.pad(mask, (width - mask.shape[1], 0)), F.pad(m, (width - m.shape[1], 0))])
                    last = torch.cat([last, torch.tensor(picked, device=device)])
                    pos = torch.cat([pos, m.sum(-1)])
            rows = rows + new
            done = {first + k for k, (j, t) in enumerate(zip(new, chosen)) if jobs.record(j, t)}
        else:  # one decode step for every row in flight
            with jobs.timed("step", len(rows), device):
                mask = torch.cat([mask, mask.new_ones(len(rows), 1)], 1)
                logits = model(input_ids=last[:, None], position_ids=pos[:, None], attention_mask=mask,
                               use_cache=True, logits_to_keep=1, **{kw: cache}).logits[:, -1]
                chosen = jobs.choose(logits, rows)
            last, pos = torch.tensor(chosen, device=device), pos + 1
            done = {r for r, (j, t) in enumerate(zip(rows, chosen)) if jobs.record(j, t)}
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
