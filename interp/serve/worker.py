"""The one model worker of ``anydepth serve``: a bounded queue of requests, batched guarded generation.

The worker thread takes the oldest waiting request and every other waiting request that can share its
generation (greedy, the same length budget; :meth:`interp.serve.api.ChatRequest.batch_key`), up to ``max_batch``,
and runs them as one :meth:`interp.guard.generator.GuardedGenerator.generate` call; each row halts on its own.
A request that arrives while a batch runs waits for the next one. Every request owns its event queue (on the
HTTP server's event loop), so clients never see each other's tokens. A cancelled request (client gone, timeout)
stops its row before the next step; a batch whose rows are all cancelled ends there and the worker moves on.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from typing import Any

from interp.serve.api import FINISH, ApiError, ChatRequest, TextStream, guarded_content
from interp.serve.metrics import ServerMetrics


class Job:
    """One request in flight: the worker writes events, the HTTP handler awaits them on its event loop."""

    def __init__(self, req: ChatRequest, loop: asyncio.AbstractEventLoop, request_id: str = ""):
        self.req, self.loop, self.request_id = req, loop, request_id
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.arrived = time.monotonic()

    def put(self, kind: str, payload: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass

    def cancel(self) -> None:
        self.cancelled.set()


class GuardService:
    """A bounded queue of :class:`Job` and one thread running the guard on batches of them."""

    def __init__(self, generator, tokenizer, model_name: str, *, queue_size: int = 64, max_batch: int = 8,
                 batch_window_s: float = 0.0, metrics: ServerMetrics | None = None):
        self.generator, self.tokenizer, self.model_name = generator, tokenizer, model_name
        self.queue_size, self.max_batch, self.batch_window_s = queue_size, max_batch, batch_window_s
        self.tok_lock = threading.Lock()  # the worker's detokenizer and request parsing share the tokenizer
        self.pending: deque[Job] = deque()
        self.cond = threading.Condition()
        self.active = 0  # jobs accepted and not yet finished
        self.busy = False  # a batch is running
        self.running: list[Job] = []  # that batch
        self.metrics = metrics or ServerMetrics(lambda: len(self.pending), lambda: self.active)
        self._stop = threading.Event()
        cfg = generator.config
        self._base = {k: getattr(cfg, k) for k in ("max_new_tokens", "do_sample", "temperature", "top_p", "seed")}
        self.greedy_server = not cfg.do_sample
        self.context_room = int(generator.max_context) - int(generator.checker.room) - 1
        self._time_checks(generator.checker)
        self.thread = threading.Thread(target=self._loop, name="anydepth-model-worker", daemon=True)
        self.thread.start()

    def _time_checks(self, checker) -> None:
        """Observe every check forward in the latency histogram (wraps this checker's own methods)."""
        for name in ("run", "piggyback"):
            inner = getattr(checker, name)

            def timed(*args, _inner=inner, **kwargs):
                start = time.perf_counter()
                try:
                    return _inner(*args, **kwargs)
                finally:
                    self.metrics.check_latency.observe(time.perf_counter() - start)

            setattr(checker, name, timed)

    # -- handler side ------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.thread.is_alive() and not self._stop.is_set()

    @property
    def queued(self) -> int:
        return len(self.pending)

    def submit(self, req: ChatRequest, loop: asyncio.AbstractEventLoop, request_id: str = "") -> Job:
        if not self.alive:
            raise ApiError(503, "the model worker is not running", "server_error", code="unavailable")
        job = Job(req, loop, request_id)
        with self.cond:
            if len(self.pending) >= self.queue_size:
                raise ApiError(429, f"server busy: {self.queue_size} requests already waiting; retry later",
                               "rate_limit_error", code="queue_full")
            self.pending.append(job)
            self.active += 1
            self.cond.notify()
        return job

    def close(self, timeout: float = 30.0) -> None:
        with self.cond:
            self._stop.set()
            for job in [*self.pending, *self.running]:  # the running batch stops at its next step
                job.cancel()
            self.cond.notify_all()
        self.thread.join(timeout)
        self.generator.close()

    # -- worker side -------------------------------------------------------------------------------
    def _take(self) -> list[Job] | None:
        """The next batch (None when stopping): the oldest job and the waiting jobs that share its key."""
        with self.cond:
            while not self.pending and not self._stop.is_set():
                self.cond.wait()
            if self._stop.is_set():
                return None
            self._gather()
            first = self.pending.popleft()
            batch, key = [first], first.req.batch_key(self.greedy_server)
            if key is not None:
                for job in list(self.pending):
                    if len(batch) >= self.max_batch:
                        break
                    if job.req.batch_key(self.greedy_server) == key:
                        self.pending.remove(job)
                        batch.append(job)
            self.busy, self.running = True, batch
            return batch

    def _gather(self) -> None:
        """Let a burst of clients arrive together: while requests keep coming less than ``batch_window_s``
        apart (at most 10 windows in all) and the batch is not full, wait for the next one."""
        if self.batch_window_s <= 0:
            return
        deadline = time.monotonic() + 10 * self.batch_window_s
        while len(self.pending) < self.max_batch and not self._stop.is_set():
            n, left = len(self.pending), min(self.batch_window_s, deadline - time.monotonic())
            if left <= 0 or not self.cond.wait_for(lambda n=n: len(self.pending) > n or self._stop.is_set(), left):
                return

    def _done(self, job: Job) -> None:
        with self.cond:
            self.active -= 1

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                break
            live = []
            for job in batch:
                if job.cancelled.is_set():
                    self.metrics.cancelled.inc()
                    job.put("error", ApiError(499, "cancelled", code="cancelled"))
                    self._done(job)
                else:
                    live.append(job)
            try:
                if live:
                    self._run(live)
            except Exception as err:  # a bad request must not kill the worker
                status = 400 if isinstance(err, ValueError) else 500
                for job in live:
                    job.put("error", ApiError(status, f"{type(err).__name__}: {' '.join(str(err).split())}",
                                              "invalid_request_error" if status == 400 else "server_error"))
            finally:
                for job in live:
                    self._done(job)
                with self.cond:
                    self.busy, self.running = False, []
        with self.cond:  # fail whatever is still queued
            left, self.pending = list(self.pending), deque()
            self.active -= len(left)
        for job in left:
            job.put("error", ApiError(503, "server shutting down", "server_error", code="unavailable"))

    def _configure(self, req: ChatRequest, single: bool) -> None:
        cfg = self.generator.config
        for k, v in self._base.items():
            setattr(cfg, k, v)
        cfg.max_new_tokens = len(req.prefill_ids) + req.max_tokens
        if not single:
            cfg.do_sample = False  # a batch is greedy by construction (batch_key)
            return
        if req.temperature is not None:
            cfg.do_sample = req.temperature > 0
            cfg.temperature = req.temperature if req.temperature > 0 else 1.0
        if req.top_p is not None:
            cfg.top_p = req.top_p
        if req.seed is not None:
            cfg.seed = req.seed

    def _run(self, batch: list[Job]) -> None:
        m = self.metrics
        m.batch_size.observe(len(batch))
        streams = [TextStream(self.tokenizer) for _ in batch]
        seen = [0] * len(batch)

        def on_event(row: int, kind: str, payload: Any) -> None:
            job = batch[row]
            if kind == "check":
                m.checks.labels(flagged=str(bool(payload.flagged)).lower()).inc()
            if kind != "tokens" or job.cancelled.is_set():
                return
            n_prefill = len(job.req.prefill_ids)
            start = max(0, n_prefill - seen[row])
            seen[row] += len(payload)
            new = payload[start:]
            if new:
                with self.tok_lock:
                    delta = streams[row].push(new)
                if delta:
                    job.put("delta", delta)

        def cancelled() -> list[int]:
            return [i for i, job in enumerate(batch) if job.cancelled.is_set()]

        self._configure(batch[0].req, single=len(batch) == 1)
        t0 = time.perf_counter()
        results = self.generator.generate([j.req.prompt_ids for j in batch], forced=[j.req.prefill_ids for j in batch],
                                          on_event=on_event, cancelled=cancelled)
        elapsed = time.perf_counter() - t0
        refusal, mode = self.generator.config.refusal_message, self.generator.config.mode
        n_tokens = 0
        for job, stream, result in zip(batch, streams, results):
            n_completion = max(0, len(result.generated_ids) - len(job.req.prefill_ids))
            n_tokens += n_completion
            if result.stop_reason == "cancelled" or job.cancelled.is_set():
                m.cancelled.inc()
                job.put("error", ApiError(503, "server shutting down", "server_error", code="unavailable")
                        if self._stop.is_set() else ApiError(499, "cancelled", code="cancelled"))
                continue
            with self.tok_lock:
                tail = stream.finish()
            if tail:
                job.put("delta", tail)
            if result.halted and refusal:
                job.put("delta", ("\n" if stream.sent else "") + refusal)
            scores = [c.score for c in result.checks if c.score is not None]
            guard = {"mode": mode, "halted": result.halted, "halt_depth": result.halt_depth,
                     "stop_reason": result.stop_reason, "n_checks": len(result.checks),
                     "max_score": max(scores) if scores else None}
            finish = FINISH.get(result.stop_reason, "stop")
            m.completions.labels(finish_reason=finish).inc()
            m.halts.inc(int(result.halted))
            job.put("final", {"content": guarded_content(stream.sent, result.halted, refusal),
                              "finish_reason": finish, "n_completion": n_completion, "guard": guard})
        m.tokens.inc(n_tokens)
        if elapsed > 0:
            m.tokens_per_s.set(n_tokens / elapsed)
