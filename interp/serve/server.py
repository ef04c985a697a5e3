"""``anydepth serve``: an OpenAI-compatible chat endpoint whose every answer runs under the ADA guard.

Standard library only (``http.server.ThreadingHTTPServer``). One model worker thread takes requests from a
bounded queue and runs :class:`interp.guard.generator.GuardedGenerator` on each in turn; each request owns its event queue,
so concurrent clients never see each other's tokens. Handler threads parse and tokenize (under one lock shared
with the worker's detokenizer), then stream server-sent events or wait for the whole answer.

Endpoints: ``POST /v1/chat/completions`` (``stream`` true/false), ``GET /v1/models``, ``GET /healthz``.
Limits: request body size (413), ``max_tokens`` cap (400), queue length (429 when full), shutting down or a dead
worker (503), no answer within ``request_timeout_s`` (504). Errors are OpenAI-style JSON.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from interp import UserError
from interp.serve.api import (
    FINISH,
    ApiError,
    ChatRequest,
    TextStream,
    build_request,
    chunk_body,
    completion_body,
    guarded_content,
    parse_body,
    sse,
    usage_chunk,
)


@dataclass
class ServerConfig:
    """Where and how ``anydepth serve`` listens."""

    host: str = field(default="127.0.0.1", metadata={"help": "bind address (0.0.0.0 exposes it on the network)"})
    port: int = field(default=8000, metadata={"help": "TCP port (0 picks a free one)"})
    probes: str | None = field(default=None, metadata={"help": "probe set for ADA-LP (`anydepth train` output)"})
    served_model_name: str | None = field(default=None, metadata={"help": "model name clients send "
                                                                           "(default: the model id)"})
    max_body_bytes: int = field(default=1_000_000, metadata={"help": "largest request body accepted"})
    max_tokens_limit: int = field(default=512, metadata={"help": "cap on max_tokens (also its default)"})
    queue_size: int = field(default=64, metadata={"help": "requests waiting for the model before 429"})
    request_timeout_s: float = field(default=600.0, metadata={"help": "give up on a request after this long"})

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise UserError(f"--port must be in 0..65535, got {self.port}")
        for name in ("max_body_bytes", "max_tokens_limit", "queue_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.request_timeout_s > 0:
            raise UserError(f"--request-timeout-s must be > 0, got {self.request_timeout_s}")


DRAIN_LIMIT = 16 << 20  # bodies over the limit but under this are read and dropped before the 413


class _Cancelled(Exception):
    pass


class Job:
    """One request in flight: the worker writes events, the handler thread reads them."""

    def __init__(self, req: ChatRequest):
        self.req = req
        self.events: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()


class GuardService:
    """The model worker: a bounded queue of :class:`Job` and one thread running the guard."""

    def __init__(self, generator, tokenizer, model_name: str, config: ServerConfig):
        self.generator, self.tokenizer, self.model_name, self.config = generator, tokenizer, model_name, config
        self.tok_lock = threading.Lock()
        self.jobs: queue.Queue = queue.Queue(maxsize=max(1, config.queue_size))
        self.active = 0  # jobs submitted and not yet finished (for /healthz and tests)
        self._count_lock = threading.Lock()
        self._stop = threading.Event()
        self._base = {k: getattr(generator.config, k) for k in ("max_new_tokens", "do_sample", "temperature",
                                                                 "top_p", "seed")}
        self.context_room = int(generator.max_context) - int(generator.checker.room) - 1
        self.thread = threading.Thread(target=self._loop, name="anydepth-model-worker", daemon=True)
        self.thread.start()

    # -- handler side ------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.thread.is_alive() and not self._stop.is_set()

    def parse(self, body: dict) -> ChatRequest:
        with self.tok_lock:
            return build_request(body, self.tokenizer, served_model=self.model_name,
                                 max_tokens_limit=self.config.max_tokens_limit, context_room=self.context_room)

    def submit(self, req: ChatRequest) -> Job:
        if not self.alive:
            raise ApiError(503, "the model worker is not running", "server_error", code="unavailable")
        job = Job(req)
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise ApiError(429, f"server busy: {self.jobs.maxsize} requests already waiting; retry later",
                           "rate_limit_error", code="queue_full") from None
        with self._count_lock:
            self.active += 1
        return job

    def close(self, timeout: float = 30.0) -> None:
        self._stop.set()
        try:
            self.jobs.put_nowait(None)
        except queue.Full:
            pass
        self.thread.join(timeout)
        self.generator.close()

    # -- worker side -------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            job = self.jobs.get()
            if job is None:
                break
            try:
                if not job.cancelled.is_set():
                    self._run(job)
                else:
                    job.events.put(("error", ApiError(499, "cancelled")))
            except _Cancelled:
                job.events.put(("error", ApiError(499, "cancelled")))
            except Exception as err:  # a bad request must not kill the worker
                status = 400 if isinstance(err, ValueError) else 500
                job.events.put(("error", ApiError(status, f"{type(err).__name__}: {err}",
                                                  "invalid_request_error" if status == 400 else "server_error")))
            finally:
                with self._count_lock:
                    self.active -= 1
        # fail whatever is still queued
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.events.put(("error", ApiError(503, "server shutting down", "server_error")))

    def _configure(self, req: ChatRequest) -> None:
        cfg = self.generator.config
        for k, v in self._base.items():
            setattr(cfg, k, v)
        cfg.max_new_tokens = len(req.prefill_ids) + req.max_tokens
        if req.temperature is not None:
            cfg.do_sample = req.temperature > 0
            cfg.temperature = req.temperature if req.temperature > 0 else 1.0
        if req.top_p is not None:
            cfg.top_p = req.top_p
        if req.seed is not None:
            cfg.seed = req.seed

    def _run(self, job: Job) -> None:
        req, n_prefill = job.req, len(job.req.prefill_ids)
        stream = TextStream(self.tokenizer)
        seen = [0]

        def on_event(row: int, kind: str, payload: Any) -> None:
            if job.cancelled.is_set():
                raise _Cancelled
            if kind != "tokens":
                return
            start = max(0, n_prefill - seen[0])
            seen[0] += len(payload)
            new = payload[start:]
            if new:
                with self.tok_lock:
                    delta = stream.push(new)
                if delta:
                    job.events.put(("delta", delta))

        self._configure(req)
        result = self.generator.generate([req.prompt_ids], forced=[req.prefill_ids], on_event=on_event)[0]
        with self.tok_lock:
            tail = stream.finish()
        if tail:
            job.events.put(("delta", tail))
        refusal = self.generator.config.refusal_message
        if result.halted and refusal:
            job.events.put(("delta", ("\n" if stream.sent else "") + refusal))
        scores = [c.score for c in result.checks if c.score is not None]
        guard = {"mode": self.generator.config.mode, "halted": result.halted, "halt_depth": result.halt_depth,
                 "stop_reason": result.stop_reason, "n_checks": len(result.checks),
                 "max_score": max(scores) if scores else None}
        job.events.put(("final", {"content": guarded_content(stream.sent, result.halted, refusal),
                                  "finish_reason": FINISH.get(result.stop_reason, "stop"),
                                  "n_completion": max(0, len(result.generated_ids) - n_prefill), "guard": guard}))


# ------------------------------------------------------------------------------------------------ HTTP
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "anydepth"
    service: GuardService  # set on the subclass made by make_server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet by default
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)

    # -- plumbing ----------------------------------------------------------------------------------
    def _json(self, status: int, body: dict, close: bool = False) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _error(self, err: ApiError, close: bool = False) -> None:
        self._json(err.status, err.body(), close=close)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    # -- routes ------------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802
        svc = self.service
        path = self.path.split("?")[0]
        if path == "/healthz":
            ok = svc.alive
            self._json(200 if ok else 503, {"status": "ok" if ok else "unavailable", "model": svc.model_name,
                                            "guard": svc.generator.config.mode, "queued": svc.jobs.qsize(),
                                            "queue_limit": svc.jobs.maxsize, "active": svc.active})
        elif path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": svc.model_name, "object": "model",
                                                         "created": 0, "owned_by": "anydepth"}]})
        else:
            self._error(ApiError(404, f"no route GET {path}", code="not_found"))

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        if path != "/v1/chat/completions":
            self._drain_or_close()
            self._error(ApiError(404, f"no route POST {path}", code="not_found"), close=self.close_connection)
            return
        try:
            raw = self._read_body()
            req = self.service.parse(parse_body(raw))
            job = self.service.submit(req)
        except ApiError as err:
            self._error(err, close=self.close_connection)
            return
        except Exception as err:  # tokenizer or template surprises: answer, do not drop the connection
            status = 400 if isinstance(err, ValueError) else 500
            self._error(ApiError(status, f"{type(err).__name__}: {err}",
                                 "invalid_request_error" if status == 400 else "server_error"))
            return
        if req.stream:
            self._stream(job)
        else:
            self._complete(job)

    def do_PUT(self) -> None:  # noqa: N802
        self._drain_or_close()
        self._error(ApiError(405, f"method {self.command} not allowed on {self.path.split('?')[0]}"),
                    close=self.close_connection)

    do_DELETE = do_PATCH = do_PUT  # noqa: N815

    def _drain_or_close(self) -> None:
        length = self.headers.get("Content-Length")
        if length and length.isdigit() and int(length) <= self.service.config.max_body_bytes:
            self.rfile.read(int(length))
        elif length or self.headers.get("Transfer-Encoding"):
            self.close_connection = True

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            raise ApiError(411, "send the body with a Content-Length header")
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            raise ApiError(411, "a Content-Length header is required")
        if int(length) > self.service.config.max_body_bytes:
            self.close_connection = True
            if int(length) <= DRAIN_LIMIT:  # read and drop it, so the client sees our answer, not a reset
                left = int(length)
                while left > 0:
                    got = len(self.rfile.read(min(left, 1 << 16)))
                    if not got:
                        break
                    left -= got
            raise ApiError(413, f"request body of {length} bytes exceeds the limit of "
                                f"{self.service.config.max_body_bytes}", code="body_too_large")
        return self.rfile.read(int(length))

    def _next(self, job: Job, deadline: float):
        left = deadline - time.monotonic()
        if left <= 0:
            raise queue.Empty
        return job.events.get(timeout=left)

    def _complete(self, job: Job) -> None:
        deadline = time.monotonic() + self.service.config.request_timeout_s
        try:
            while True:
                kind, payload = self._next(job, deadline)
                if kind == "final":
                    body = completion_body(job.req, payload["content"], payload["finish_reason"],
                                           payload["n_completion"], payload["guard"])
                    self._json(200, body)
                    return
                if kind == "error":
                    self._error(payload)
                    return
        except queue.Empty:
            job.cancelled.set()
            self._error(ApiError(504, "no answer within the request timeout", "server_error", code="timeout"))

    def _stream(self, job: Job) -> None:
        req = job.req
        deadline = time.monotonic() + self.service.config.request_timeout_s
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self._chunk(sse(chunk_body(req, {"role": "assistant", "content": ""})))
            while True:
                try:
                    kind, payload = self._next(job, deadline)
                except queue.Empty:
                    job.cancelled.set()
                    kind, payload = "error", ApiError(504, "no answer within the request timeout", "server_error")
                if kind == "delta":
                    self._chunk(sse(chunk_body(req, {"content": payload})))
                    continue
                if kind == "final":
                    self._chunk(sse(chunk_body(req, {}, payload["finish_reason"], guard=payload["guard"])))
                    if req.include_usage:
                        self._chunk(sse(usage_chunk(req, payload["n_completion"])))
                else:
                    self._chunk(sse(payload.body()))
                self._chunk(sse("[DONE]"))
                self._chunk(b"")
                return
        except (BrokenPipeError, ConnectionResetError):
            job.cancelled.set()
            self.close_connection = True


class GuardServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # listen backlog: socketserver's default of 5 drops connections when a burst of clients connects at once
    # (they then wait for SYN retransmits, seconds each, and can time out on a busy machine)
    request_queue_size = 128

    def __init__(self, address, handler, service: GuardService, verbose: bool = False):
        super().__init__(address, handler)
        self.service, self.verbose = service, verbose

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> threading.Thread:
        """Serve in a background thread (tests, notebooks); stop with :meth:`stop`."""
        thread = threading.Thread(target=self.serve_forever, name="anydepth-http", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.service.close()


def make_server(generator, tokenizer, model_name: str, config: ServerConfig | None = None,
                verbose: bool = False) -> GuardServer:
    """A server (not yet serving) over a :class:`GuardedGenerator`; ``config.port`` 0 picks a free port."""
    config = config or ServerConfig()
    service = GuardService(generator, tokenizer, model_name, config)
    handler = type("Handler", (_Handler,), {"service": service})
    try:
        return GuardServer((config.host, config.port), handler, service, verbose)
    except OSError:
        service.close()
        raise
