"""``anydepth serve``: an OpenAI-compatible chat endpoint whose every answer runs under the ADA guard.

FastAPI routes on uvicorn (h11), server-sent events through sse-starlette, request bodies validated by the pydantic
models of :mod:`interp.serve.api`, and one model worker that runs queued requests in batches
(:mod:`interp.serve.worker`).

Endpoints: ``POST /v1/chat/completions`` (``stream`` true/false), ``GET /v1/models``, ``GET /healthz``,
``GET /metrics`` (Prometheus). With API keys configured, ``/v1/*`` and ``/metrics`` need ``Authorization: Bearer
<key>`` (401 otherwise). Limits: body size (413, checked before the body is read), body not sent in time (408),
``max_tokens`` cap (400), queue length (429), open connections (503), shutting down or a dead worker (503), no
answer within ``request_timeout_s`` (504). Errors are OpenAI-style JSON; every answer carries ``x-request-id``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable

import anyio
import h11
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from interp.serve.api import (
    ApiError,
    build_request,
    chunk_body,
    completion_body,
    dumps,
    parse_body,
    usage_chunk,
)
from interp.serve.metrics import CONTENT_TYPE, ServerMetrics
from interp.serve.options import ServerConfig
from interp.serve.worker import GuardService, Job

DRAIN_LIMIT = 64 << 20  # an oversized body up to this is read and dropped, so the client sees the 413
access_log = logging.getLogger("anydepth.serve.access")


# ------------------------------------------------------------------------------------------------ connections
class GuardH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for request headers and a cap on open connections."""

    header_timeout_s = 10.0
    max_connections = 512

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            body = dumps(ApiError(503, f"server busy: {self.max_connections} connections open; retry later",
                                  "server_error", code="too_many_connections").body()).encode()
            transport.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                            b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            transport.close()
            return
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_deadline()

    def _arm_header_deadline(self) -> None:
        cycle = self.cycle
        self.loop.call_later(self.header_timeout_s, self._header_deadline, cycle)

    def _header_deadline(self, cycle) -> None:
        """No new request started since the deadline was armed: drop the connection (idle or slow headers)."""
        if self.cycle is cycle and not self.transport.is_closing():
            if self.conn.our_state in (h11.IDLE, h11.DONE) or cycle is None or cycle.response_complete:
                self.transport.close()


# ------------------------------------------------------------------------------------------------ app
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
ROUTES = ("/v1/chat/completions", "/v1/models", "/healthz", "/metrics")


class AccessLog:
    """ASGI middleware: a request id on every answer (``x-request-id``, the client's if it sent a sane one),
    per-route request counts and one JSON log line per request."""

    def __init__(self, app, metrics: ServerMetrics, enabled: bool):
        self.app, self.metrics, self.enabled = app, metrics, enabled

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        sent = dict((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope.get("headers", []))
        rid = sent.get("x-request-id", "")
        rid = rid if REQUEST_ID.match(rid) else uuid.uuid4().hex
        scope.setdefault("state", {}).update(request_id=rid, t0=time.monotonic())
        status, start = [0], time.perf_counter()

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            path = scope.get("path", "")
            route = path if path in ROUTES else "other"
            self.metrics.requests.labels(route=route, status=str(status[0] or 499)).inc()
            if self.enabled:
                client = scope.get("client") or ("", 0)
                access_log.info(json.dumps({
                    "ts": round(time.time(), 3), "request_id": rid, "client": f"{client[0]}:{client[1]}",
                    "method": scope.get("method"), "path": path, "status": status[0] or 499,
                    "ms": round(1000 * (time.perf_counter() - start), 1), **scope["state"].get("log", {})}))


def error_response(err: ApiError, close: bool = False) -> JSONResponse:
    headers = {"connection": "close"} if close else {}
    if err.status == 401:
        headers["www-authenticate"] = "Bearer"
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body, read only while it stays within ``limit`` bytes (413 past it, after dropping the rest up to
    DRAIN_LIMIT so the client reads the answer) and arrives within ``timeout_s`` (408)."""
    length = request.headers.get("content-length")
    if length is not None and not length.isdigit():
        raise ApiError(400, "Content-Length must be a number of bytes")
    declared = int(length) if length is not None else None
    too_large = ApiError(413, f"request body of {declared if declared is not None else 'more than ' + str(limit)} "
                              f"bytes exceeds the limit of {limit}", code="body_too_large")
    if declared is not None and declared > DRAIN_LIMIT:
        raise too_large
    parts, size = [], 0
    try:
        with anyio.fail_after(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size <= limit and (declared is None or declared <= limit):
                    parts.append(chunk)
                elif size > DRAIN_LIMIT:
                    break
    except TimeoutError:
        raise ApiError(408, f"request body not received within {timeout_s:g} s", code="body_timeout") from None
    if size > limit or (declared is not None and declared > limit):
        raise too_large
    return b"".join(parts)


def create_app(service: GuardService, config: ServerConfig, stopping: Callable[[], bool] = lambda: False) -> FastAPI:
    """The FastAPI application over a running :class:`GuardService`. ``stopping()`` turns true when the server
    is asked to stop (SIGTERM / SIGINT): open requests then end with a 503 ``shutdown`` error (a stream: an error
    chunk and ``[DONE]``) instead of being cut, so a client can tell."""
    app = FastAPI(title="anydepth serve", docs_url=None, redoc_url=None, openapi_url=None)
    authorize = _authorizer([k.encode() for k in config.keys()])
    _error_handlers(app)
    _info_routes(app, service, authorize, bool(config.keys()))
    chat = _Chat(service, config, stopping)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        return await chat.handle(request)

    return app


def _authorizer(keys: list[bytes]) -> Callable[[Request], None]:
    """A check that the request carries one of ``keys`` as a bearer token (nothing to check without keys)."""

    def authorize(request: Request) -> None:
        if not keys:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip().encode() if scheme.lower() == "bearer" else b""
        ok = False
        for key in keys:  # compare with every key, in constant time each
            ok |= hmac.compare_digest(given, key)
        if not ok:
            raise ApiError(401, "missing or wrong API key: send `Authorization: Bearer <key>`",
                           "authentication_error", code="invalid_api_key")

    return authorize


def _error_handlers(app: FastAPI) -> None:
    """Every error as an OpenAI-style JSON error body."""

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, err: ApiError):
        return error_response(err, close=err.status in (408, 413))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, err: StarletteHTTPException):
        path, method = request.url.path, request.method
        if err.status_code == 405:
            return error_response(ApiError(405, f"method {method} not allowed on {path}"))
        if err.status_code == 404:
            return error_response(ApiError(404, f"no route {method} {path}", code="not_found"))
        return error_response(ApiError(err.status_code, str(err.detail)))

    @app.exception_handler(Exception)
    async def on_crash(request: Request, err: Exception):
        return error_response(ApiError(500, f"{type(err).__name__}: {' '.join(str(err).split())}", "server_error"))


def _info_routes(app: FastAPI, service: GuardService, authorize: Callable[[Request], None], auth: bool) -> None:
    """``/healthz`` (open), ``/metrics`` and ``/v1/models``."""

    @app.get("/healthz")
    async def healthz():
        ok = service.alive
        return JSONResponse({"status": "ok" if ok else "unavailable", "model": service.model_name,
                             "guard": service.generator.config.mode, "queued": service.queued,
                             "queue_limit": service.queue_size, "active": service.active,
                             "max_batch": service.max_batch, "auth": auth}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def get_metrics(request: Request):
        authorize(request)
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [{"id": service.model_name, "object": "model", "created": 0,
                                            "owned_by": "anydepth"}]}


class _Chat:
    """``/v1/chat/completions``: parse the request off the event loop, queue it, then answer as one JSON body or
    as a stream of chunks, ending every way (done, error, timeout, shutdown, client gone) with the row stopped."""

    def __init__(self, service: GuardService, config: ServerConfig, stopping: Callable[[], bool]):
        self.service, self.config, self.stopping = service, config, stopping

    def parse(self, raw: bytes):
        body = parse_body(raw)
        with self.service.tok_lock:
            return build_request(body, self.service.tokenizer, served_model=self.service.model_name,
                                 max_tokens_limit=self.config.max_tokens_limit, context_room=self.service.context_room,
                                 allow_special=self.config.allow_special_tokens)

    async def handle(self, request: Request):
        raw = await read_body(request, self.config.max_body_bytes, self.config.body_timeout_s)
        try:
            req = await anyio.to_thread.run_sync(self.parse, raw)
        except ApiError:
            raise
        except Exception as err:  # tokenizer surprises: answer, do not drop the connection
            status = 400 if isinstance(err, ValueError) else 500
            raise ApiError(status, f"{type(err).__name__}: {' '.join(str(err).split())}",
                           "invalid_request_error" if status == 400 else "server_error") from err
        rid = request.scope["state"]["request_id"]
        job = self.service.submit(req, asyncio.get_running_loop(), rid)
        request.scope["state"]["log"] = {"stream": req.stream, "prompt_tokens": len(req.prompt_ids)}
        deadline = job.arrived + self.config.request_timeout_s
        if req.stream:
            return EventSourceResponse(self.stream_events(request, job, deadline), sep="\n", ping=15,
                                       headers={"cache-control": "no-cache"})
        return await self.complete(request, job, deadline)

    async def next_event(self, request: Request, job: Job, deadline: float, watch: bool):
        """The job's next event; ("gone", None) when the client left; a 504 error past the deadline."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                job.cancel()
                return "error", ApiError(504, "no answer within the request timeout", "server_error",
                                         code="timeout")
            if self.stopping():
                job.cancel()
                return "error", ApiError(503, "the server is shutting down; retry the request", "server_error",
                                         code="shutdown")
            try:
                return await asyncio.wait_for(job.events.get(), timeout=min(left, 0.1))
            except asyncio.TimeoutError:
                if watch and await request.is_disconnected():
                    job.cancel()
                    return "gone", None

    def note(self, request: Request, payload: dict) -> None:
        request.scope["state"].setdefault("log", {}).update(
            finish_reason=payload["finish_reason"], completion_tokens=payload["n_completion"],
            halted=payload["guard"]["halted"])
        self.service.metrics.request_latency.observe(
            time.monotonic() - request.scope["state"].get("t0", time.monotonic()))

    async def complete(self, request: Request, job: Job, deadline: float):
        try:
            while True:
                kind, payload = await self.next_event(request, job, deadline, watch=True)
                if kind == "final":
                    self.note(request, payload)
                    return completion_body(job.req, payload["content"], payload["finish_reason"],
                                           payload["n_completion"], payload["guard"])
                if kind == "error":
                    return error_response(payload)
                if kind == "gone":
                    return Response(status_code=499)
        finally:
            job.cancel()  # no-op once finished; stops the row if this handler is torn down early

    async def stream_events(self, request: Request, job: Job, deadline: float):
        req = job.req
        try:
            yield {"data": dumps(chunk_body(req, {"role": "assistant", "content": ""}))}
            while True:
                kind, payload = await self.next_event(request, job, deadline, watch=False)
                if kind == "delta":
                    yield {"data": dumps(chunk_body(req, {"content": payload}))}
                    continue
                if kind == "final":
                    self.note(request, payload)
                    yield {"data": dumps(chunk_body(req, {}, payload["finish_reason"], guard=payload["guard"]))}
                    if req.include_usage:
                        yield {"data": dumps(usage_chunk(req, payload["n_completion"]))}
                else:
                    yield {"data": dumps(payload.body())}
                yield {"data": "[DONE]"}
                return
        finally:
            job.cancel()  # the client left (sse-starlette cancels this generator) or the stream ended


# ------------------------------------------------------------------------------------------------ server
class _Uvicorn(uvicorn.Server):
    """uvicorn's server that also raises the app's stop flag on SIGTERM / SIGINT, so open streams end with an error
    chunk and ``[DONE]`` within the graceful-shutdown window instead of being cut."""

    def __init__(self, stopping: threading.Event, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.stopping = stopping

    def handle_exit(self, sig, frame) -> None:
        self.stopping.set()
        super().handle_exit(sig, frame)


class GuardServer:
    """uvicorn serving :func:`create_app` on a socket bound at construction."""

    def __init__(self, service: GuardService, config: ServerConfig, sock: socket.socket):
        self.service, self.config, self.sock = service, config, sock
        protocol = type("Protocol", (GuardH11Protocol,), {"header_timeout_s": config.header_timeout_s,
                                                          "max_connections": config.max_connections})
        self.stopping = threading.Event()  # set by SIGTERM / SIGINT or stop(): open requests end with an error
        app = AccessLog(create_app(service, config, self.stopping.is_set), service.metrics, config.access_log)
        self.uvicorn = _Uvicorn(self.stopping, uvicorn.Config(
            app, http=protocol, lifespan="off", access_log=False, log_level="warning", log_config=None,
            timeout_keep_alive=config.keep_alive_s, timeout_graceful_shutdown=5, backlog=2048,
            h11_max_incomplete_event_size=64 * 1024))
        self.thread: threading.Thread | None = None

    @property
    def server_address(self) -> tuple[str, int]:
        return self.sock.getsockname()[:2]

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://{host}:{port}"

    def serve_forever(self) -> None:
        """Serve in this thread until SIGINT / SIGTERM (uvicorn's handlers) or :meth:`stop`."""
        self.uvicorn.run(sockets=[self.sock])

    def start(self) -> threading.Thread:
        """Serve in a background thread (tests, notebooks); stop with :meth:`stop`."""
        self.thread = threading.Thread(target=self.serve_forever, name="anydepth-http", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.uvicorn.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.uvicorn.started:
            raise RuntimeError("the HTTP server did not start")
        return self.thread

    def stop(self) -> None:
        self.stopping.set()
        self.uvicorn.should_exit = True
        if self.thread is not None:
            self.thread.join(30)
        self.service.close()
        self.sock.close()


def make_server(generator, tokenizer, model_name: str, config: ServerConfig | None = None) -> GuardServer:
    """A server (not yet serving) over a :class:`GuardedGenerator`; ``config.port`` 0 picks a free port."""
    config = config or ServerConfig()
    config.validate()
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((config.host, config.port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    service = GuardService(generator, tokenizer, model_name, queue_size=config.queue_size,
                           max_batch=config.max_batch, batch_window_s=config.batch_window_ms / 1000)
    return GuardServer(service, config, sock)
