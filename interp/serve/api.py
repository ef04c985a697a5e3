"""OpenAI chat-completions wire format for ``anydepth serve``: request validation, prompt building, JSON bodies.

Pure functions (no sockets, no threads), so the rules are testable on their own:
- ``messages`` holds ``system`` / ``user`` / ``assistant`` turns; a final ``assistant`` message is a **prefill**
  the model continues (that is how a deep-prefill attack reaches the guard); its text is not repeated in the
  answer. Content is a string or a list of ``{"type": "text", "text": ...}`` parts.
- ``max_tokens`` / ``max_completion_tokens`` count new tokens after the prefill and may not exceed the server's
  limit; ``n`` must be 1; ``temperature`` 0 (or absent with a greedy server) decodes greedily.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")
FINISH = {"eos": "stop", "max_new_tokens": "length", "context_limit": "length", "forced_end": "stop",
          "halted": "content_filter"}
UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "logprobs", "top_logprobs", "stop",
               "response_format", "logit_bias")


class ApiError(Exception):
    """An error answered as OpenAI-style JSON with an HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    """A validated chat-completions request, tokenized."""

    model: str
    prompt_ids: list[int]
    prefill_ids: list[int]
    max_tokens: int
    stream: bool = False
    include_usage: bool = False
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(400, f"{where}: only text content parts are supported", param="messages")
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(400, f"{where}: content must be a string or a list of text parts", param="messages")


def _number(body: dict, key: str, lo: float, hi: float, integer: bool = False):
    value = body.get(key)
    if value is None:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise ApiError(400, f"{key} must be {kind} in [{lo}, {hi}], got {value!r}", param=key)
    return value


def parse_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ApiError(400, f"request body is not valid JSON: {err}") from err
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def build_request(body: dict, tokenizer, *, served_model: str, max_tokens_limit: int,
                  context_room: int | None = None) -> ChatRequest:
    """Validate ``body`` and render its messages with the tokenizer's chat template.

    ``context_room``: tokens the model may hold for prompt + prefill + new tokens (its context minus the guard's
    span and lookahead); longer requests are refused here rather than mid-stream.
    """
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model is required (a string)", param="model")
    if model != served_model:
        raise ApiError(404, f"model {model!r} is not served here; use {served_model!r}", param="model",
                       code="model_not_found")
    for key in UNSUPPORTED:
        if body.get(key) not in (None, [], {}):
            raise ApiError(400, f"{key} is not supported by this server", param=key)
    n = _number(body, "n", 1, 1, integer=True)
    del n
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(400, f"messages[{i}]: role must be one of {', '.join(ROLES)}", param="messages")
        turns.append({"role": m["role"], "content": _text(m.get("content"), f"messages[{i}]")})
    prefill = turns.pop()["content"] if turns[-1]["role"] == "assistant" else None
    if not turns or turns[-1]["role"] != "user":
        raise ApiError(400, "the conversation must end with a user message (optionally followed by one assistant "
                            "message to continue)", param="messages")
    try:
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    except Exception as err:  # jinja errors and raise_exception() in templates
        raise ApiError(400, f"the chat template rejected these messages: {' '.join(str(err).split())}",
                       param="messages") from err
    prompt_ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    prefill_ids: list[int] = []
    if prefill:
        from interp.spans.derive import encode_response

        prefill_ids = [int(t) for t in encode_response(tokenizer, prompt_ids, prefill)]
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = max_tokens_limit
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= max_tokens_limit:
        raise ApiError(400, f"max_tokens must be an integer in [1, {max_tokens_limit}], got {max_tokens!r}",
                       param="max_tokens")
    total = len(prompt_ids) + len(prefill_ids) + max_tokens
    if context_room is not None and total > context_room:
        raise ApiError(400, f"prompt ({len(prompt_ids) + len(prefill_ids)} tokens) + max_tokens ({max_tokens}) "
                            f"exceed the {context_room} tokens this model and guard allow",
                       param="messages", code="context_length_exceeded")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", param="stream_options")
    return ChatRequest(model=model, prompt_ids=prompt_ids, prefill_ids=prefill_ids, max_tokens=max_tokens,
                       stream=stream, include_usage=bool(options.get("include_usage", False)),
                       temperature=_number(body, "temperature", 0.0, 2.0),
                       top_p=_number(body, "top_p", 0.0, 1.0),
                       seed=_number(body, "seed", -(2 ** 63), 2 ** 63 - 1, integer=True))


# ------------------------------------------------------------------------------------------------ responses
def usage(req: ChatRequest, n_completion: int) -> dict:
    prompt = len(req.prompt_ids) + len(req.prefill_ids)
    return {"prompt_tokens": prompt, "completion_tokens": n_completion, "total_tokens": prompt + n_completion}


def completion_body(req: ChatRequest, content: str, finish_reason: str, n_completion: int, guard: dict) -> dict:
    return {"id": req.id, "object": "chat.completion", "created": req.created, "model": req.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish_reason, "logprobs": None}],
            "usage": usage(req, n_completion), "guard": guard}


def chunk_body(req: ChatRequest, delta: dict, finish_reason: str | None = None, **extra) -> dict:
    return {"id": req.id, "object": "chat.completion.chunk", "created": req.created, "model": req.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}], **extra}


def usage_chunk(req: ChatRequest, n_completion: int) -> dict:
    return {"id": req.id, "object": "chat.completion.chunk", "created": req.created, "model": req.model,
            "choices": [], "usage": usage(req, n_completion)}


def sse(data: dict | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


class TextStream:
    """Incremental detokenization: deltas whose concatenation is ``decode(all ids)`` (holds back split UTF-8)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.sent = tokenizer, [], ""

    def _decode(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def push(self, ids) -> str:
        self.ids.extend(int(t) for t in ids)
        text = self._decode()
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta

    def finish(self) -> str:
        text = self._decode()
        delta = text[len(self.sent):] if text.startswith(self.sent) else ""
        self.sent = self.sent + delta
        return delta


def guarded_content(text: str, halted: bool, refusal_message: str) -> str:
    """What the client reads: the released text, then the refusal message on a halt (as ``GuardResult.text``)."""
    if halted and refusal_message:
        return text + ("\n" if text else "") + refusal_message
    return text
