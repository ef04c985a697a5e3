"""OpenAI chat-completions wire format for ``anydepth serve``: pydantic request models, prompt building, bodies.

No sockets and no threads, so the rules are testable on their own:
- ``messages`` holds ``system`` / ``user`` / ``assistant`` turns; a final ``assistant`` message is a **prefill**
  the model continues (that is how a deep-prefill attack reaches the guard); its text is not repeated in the
  answer. Content is a string or a list of ``{"type": "text", "text": ...}`` parts.
- ``max_tokens`` / ``max_completion_tokens`` count new tokens after the prefill and may not exceed the server's
  limit; ``n`` must be 1; ``temperature`` 0 (or absent with a greedy server) decodes greedily.
- Special-token strings in message content are encoded as plain text unless the server allows them, so a user
  cannot forge a system turn or the Safety-Token span. No field names a file or a model to load.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

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


# ------------------------------------------------------------------------------------------------ request models
class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: StrictStr


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: StrictStr | list[TextPart]
    name: StrictStr | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in value):
                raise ValueError('only text content parts are supported ({"type": "text", "text": "..."})')
        elif not isinstance(value, str):
            raise ValueError("content must be a string or a list of text parts")
        return value

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: StrictBool = False


class ChatCompletionRequest(BaseModel):
    """The fields of an OpenAI chat-completions request this server reads (others are ignored)."""

    model_config = ConfigDict(extra="ignore")
    model: StrictStr = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    n: Literal[1] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    temperature: StrictFloat | StrictInt | None = Field(default=None, ge=0, le=2)
    top_p: StrictFloat | StrictInt | None = Field(default=None, ge=0, le=1)
    seed: StrictInt | None = Field(default=None, ge=-(2 ** 63), le=2 ** 63 - 1)
    user: StrictStr | None = None
    # accepted only when empty, so a client relying on them gets a clear 400 instead of silence
    tools: Any = None
    functions: Any = None
    tool_choice: Any = None
    function_call: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    stop: Any = None
    response_format: Any = None
    logit_bias: Any = None


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

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def batch_key(self, greedy_server: bool) -> tuple | None:
        """Requests with equal keys may share one batched generation (greedy, same length budget); None: alone."""
        greedy = self.greedy or (self.temperature is None and greedy_server)
        if not greedy:
            return None  # sampled rows would draw from one generator and change each other's samples
        return (len(self.prefill_ids) + self.max_tokens,)


BRANCHES = ("str", "int", "float", "bool", "TextPart", "StreamOptions")  # union-branch tags in error locations


def validation_message(err: ValidationError) -> tuple[str, str | None]:
    """One line (first problem, with its location) and the top-level field it concerns."""
    first = err.errors()[0]
    loc = [p for p in first.get("loc", ()) if not (isinstance(p, str) and (
        p in BRANCHES or p.startswith(("function-", "list[", "union[", "literal["))))]
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "request body"
    value, message = first.get("input"), first["msg"].removeprefix("Value error, ")
    shown = "" if isinstance(value, (dict, list)) or first["type"] in ("missing", "value_error") else (
        f", got {value!r:.60}")
    return f"{where}: {message}{shown}", (str(loc[0]) if loc else None)


def parse_body(raw: bytes) -> ChatCompletionRequest:
    """The request model of a JSON body, or a 400 naming the first problem."""
    too_deep = ApiError(400, "request body is nested too deeply to parse")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ApiError(400, f"request body is not valid JSON: {err}") from err
    except RecursionError:
        raise too_deep from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    try:
        return ChatCompletionRequest.model_validate(data)
    except RecursionError:
        raise too_deep from None
    except ValidationError as err:
        message, param = validation_message(err)
        raise ApiError(400, message, param=param) from None


def build_request(body: ChatCompletionRequest, tokenizer, *, served_model: str, max_tokens_limit: int,
                  context_room: int | None = None, allow_special: bool = False) -> ChatRequest:
    """Check ``body`` against this server and render its messages with the tokenizer's chat template.

    ``context_room``: tokens the model may hold for prompt + prefill + new tokens (its context minus the guard's
    span and lookahead); longer requests are refused here rather than mid-stream. ``allow_special``: encode
    special-token strings in message content as special tokens (research only; default: plain text).
    """
    from interp import UserError
    from interp.spans.derive import encode_response
    from interp.spans.render import one_line, render_chat_ids

    if body.model != served_model:
        raise ApiError(404, f"model {body.model!r} is not served here; use {served_model!r}", param="model",
                       code="model_not_found")
    for key in UNSUPPORTED:
        if getattr(body, key) not in (None, [], {}):
            raise ApiError(400, f"{key} is not supported by this server", param=key)
    turns = [{"role": m.role, "content": m.text()} for m in body.messages]
    prefill = turns.pop()["content"] if turns[-1]["role"] == "assistant" else None
    if not turns or turns[-1]["role"] != "user":
        raise ApiError(400, "the conversation must end with a user message (optionally followed by one assistant "
                            "message to continue)", param="messages")
    try:
        prompt_ids = render_chat_ids(tokenizer, turns, True, allow_special)
    except UserError as err:  # jinja errors, raise_exception() in templates, content the template rewrites
        raise ApiError(400, f"the chat template rejected these messages: {one_line(err)}", param="messages") from err
    prefill_ids = [int(t) for t in encode_response(tokenizer, prompt_ids, prefill, allow_special)] if prefill else []
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    if max_tokens is None:
        max_tokens = max_tokens_limit
    if not 1 <= max_tokens <= max_tokens_limit:
        raise ApiError(400, f"max_tokens must be an integer in [1, {max_tokens_limit}], got {max_tokens!r}",
                       param="max_tokens")
    total = len(prompt_ids) + len(prefill_ids) + max_tokens
    if context_room is not None and total > context_room:
        raise ApiError(400, f"prompt ({len(prompt_ids) + len(prefill_ids)} tokens) + max_tokens ({max_tokens}) "
                            f"exceed the {context_room} tokens this model and guard allow",
                       param="messages", code="context_length_exceeded")
    options = body.stream_options or StreamOptions()
    return ChatRequest(model=body.model, prompt_ids=prompt_ids, prefill_ids=prefill_ids, max_tokens=max_tokens,
                       stream=body.stream, include_usage=options.include_usage,
                       temperature=None if body.temperature is None else float(body.temperature),
                       top_p=None if body.top_p is None else float(body.top_p), seed=body.seed)


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


def dumps(data: dict) -> str:
    return json.dumps(data, ensure_ascii=False)


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
