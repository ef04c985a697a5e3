"""The options of ``anydepth serve`` (:class:`ServerConfig`) and where its API keys come from.

Kept apart from :mod:`interp.serve.server` so the command line can build its parser without importing the web
stack.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from interp import UserError

API_KEY_ENV = "ANYDEPTH_API_KEY"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServerConfig:
    """Where and how ``anydepth serve`` listens."""

    host: str = field(default="127.0.0.1", metadata={"help": "bind address (0.0.0.0 exposes it on the network)"})
    port: int = field(default=8000, metadata={"help": "TCP port (0 picks a free one)"})
    probes: str | None = field(default=None, metadata={"help": "probe set for ADA-LP (`anydepth train` output)"})
    served_model_name: str | None = field(default=None, metadata={"help": "model name clients send "
                                                                           "(default: the model id)"})
    api_key: str | None = field(default=None, metadata={
        "help": f"require `Authorization: Bearer <key>` (visible in ps; prefer ${API_KEY_ENV} or --api-keys-file)"})
    api_keys_file: str | None = field(default=None, metadata={"help": "file of accepted keys, one per line "
                                                                      "(# comments)"})
    max_batch: int = field(default=8, metadata={"help": "queued requests the worker generates as one batch"})
    batch_window_ms: float = field(default=20.0, metadata={
        "help": "before a batch that is not full, wait while requests keep arriving this close together "
                "(at most 10 windows)"})
    allow_special_tokens: bool = field(default=False, metadata={
        "help": "encode special-token strings in message content as special tokens (research; default: text)"})
    max_body_bytes: int = field(default=1_000_000, metadata={"help": "largest request body accepted"})
    max_tokens_limit: int = field(default=512, metadata={"help": "cap on max_tokens (also its default)"})
    queue_size: int = field(default=64, metadata={"help": "requests waiting for the model before 429"})
    request_timeout_s: float = field(default=600.0, metadata={"help": "give up on a request after this long"})
    header_timeout_s: float = field(default=10.0, metadata={
        "help": "close a connection whose request headers have not arrived after this long"})
    body_timeout_s: float = field(default=30.0, metadata={"help": "answer 408 when the body takes longer"})
    keep_alive_s: float = field(default=5.0, metadata={"help": "close an idle keep-alive connection after this"})
    max_connections: int = field(default=512, metadata={"help": "open connections before new ones get 503"})
    access_log: bool = field(default=True, metadata={"help": "one JSON line per request on stderr"})

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise UserError(f"--port must be in 0..65535, got {self.port}")
        for name in ("max_body_bytes", "max_tokens_limit", "queue_size", "max_batch", "max_connections"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("request_timeout_s", "header_timeout_s", "body_timeout_s", "keep_alive_s"):
            if not getattr(self, name) > 0:
                raise UserError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.batch_window_ms < 0:
            raise UserError(f"--batch-window-ms must be >= 0, got {self.batch_window_ms}")
        self.keys()

    def keys(self) -> list[str]:
        """Accepted API keys from --api-key, $ANYDEPTH_API_KEY and --api-keys-file (empty: no authentication)."""
        keys = [k for k in (self.api_key, os.environ.get(API_KEY_ENV)) if k]
        if self.api_keys_file:
            path = Path(self.api_keys_file)
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as err:
                raise UserError(f"--api-keys-file {path}: cannot read it ({err.__class__.__name__})") from err
            file_keys = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
            if not file_keys:
                raise UserError(f"--api-keys-file {path} holds no key (one per line, # for comments)")
            keys += file_keys
        bad = [k for k in keys if len(k) < 8 or any(c.isspace() for c in k)]
        if bad:
            raise UserError("an API key must be at least 8 characters without spaces")
        return keys

    def redacted(self) -> dict:
        """The settings with the key itself hidden (for logs)."""
        from interp.config import to_dict

        out = to_dict(self)
        if out.get("api_key"):
            out["api_key"] = "***"
        return out
