"""The position study's control spans and prompt landmarks, derived from a chat template like the Safety Tokens.

A *control span* is injected where the Safety-Token span would be (after d response tokens, in the same tree mask)
but is not the assistant header, so a probe there has seen exactly as much of the answer from a span of the same
length:

* ``user_header``: the end of turn plus the *user* turn's opener (``<|im_end|>\\n<|im_start|>user\\n``), tokenized
  in context (as long as the span on most templates; shorter where the user's role takes fewer tokens);
* ``newlines``: a run of newline tokens as long as the span;
* ``random``: a fixed span of ordinary (non-special) tokens as long as the span, drawn with a seed.

Each control is read as far from its end as the header's probe token is from the span's end (the role token of
the user header, when the template puts the same text after either role). The *prompt suffix* is what the template puts after the user's
text in every prompt; the last instruction token (t_inst) is the token just before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from interp import UserError
from interp.spans.derive import ASSISTANT_MARK, NEXT_USER_MARK, USER_MARK, SafetySpans, marker_renders
from interp.spans.render import encode_plain, token_range

CONTROLS = ("user_header", "newlines", "random")


@dataclass(frozen=True)
class ControlSpans:
    """Control spans, where each is read, and the prompt suffix."""

    spans: dict[str, tuple[int, ...]]  # control name -> token ids
    read_offset: int  # each control is read this many tokens before its end (1 = its last token), as the header
    prompt_suffix_ids: tuple[int, ...]  # template tokens after the user's text in every prompt
    skipped: dict[str, str] = field(default_factory=dict)  # control -> why it was not built

    @property
    def names(self) -> list[str]:
        return [c for c in CONTROLS if c in self.spans]

    def read_index(self, name: str) -> int:
        """The index read in control ``name``."""
        return len(self.spans[name]) - self.read_offset

    def to_dict(self) -> dict:
        return {"spans": {k: list(v) for k, v in self.spans.items()}, "read_offset": self.read_offset,
                "prompt_suffix_ids": list(self.prompt_suffix_ids), "skipped": dict(self.skipped)}

    def t_inst(self, prompt_ids) -> int | None:
        """Index of the last instruction token of a prompt, None when the prompt does not end with the suffix."""
        n = len(self.prompt_suffix_ids)
        if len(prompt_ids) <= n or tuple(int(t) for t in prompt_ids[-n:]) != self.prompt_suffix_ids:
            return None
        return len(prompt_ids) - n - 1


def _user_header(tokenizer, eot: str) -> tuple[tuple[int, ...] | None, str]:
    r = marker_renders(tokenizer)
    if r.uav is None:
        return None, "the chat template refuses a second user turn"
    a_end, v = r.uav.find(ASSISTANT_MARK) + len(ASSISTANT_MARK), r.uav.find(NEXT_USER_MARK)
    if not r.uav[a_end:v].startswith(eot):
        return None, "the text after an assistant message does not start with the end of turn"
    loc = token_range(tokenizer, r.uav, a_end, v)
    if loc is None:
        return None, "a token crosses the user turn's boundary"
    return tuple(loc[0][loc[1]:loc[2]]), ""


def _prompt_suffix(tokenizer) -> tuple[int, ...]:
    r = marker_renders(tokenizer)
    loc = token_range(tokenizer, r.ug, r.ug.index(USER_MARK) + len(USER_MARK))
    if loc is None:
        raise UserError("cannot locate the template tokens after the user's text in a rendered prompt (a token "
                        "crosses the boundary); the last instruction token is not defined for this template")
    return tuple(loc[0][loc[1]:loc[2]])


def _ordinary_ids(tokenizer) -> np.ndarray:
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    added = set((getattr(tokenizer, "get_added_vocab", dict)() or {}).values())
    ids = np.arange(min(len(tokenizer), getattr(tokenizer, "vocab_size", len(tokenizer))))
    return ids[~np.isin(ids, list(special | added))]


def derive_controls(tokenizer, spans: SafetySpans, seed: int = 0) -> ControlSpans:
    """The controls of ``tokenizer``'s template for the Safety-Token ``spans`` (a control that cannot be built is
    recorded in ``skipped`` with the reason)."""
    h = len(spans.span_ids)
    offset = h - spans.probe_index
    out, skipped = {}, {}
    user, why = _user_header(tokenizer, spans.end_of_turn)
    if user is not None and len(user) < offset:
        user, why = None, f"the user header ({len(user)} tokens) is shorter than the header's tail after its probe token"
    if user is not None and user == spans.span_ids:
        user, why = None, "the user header tokenizes like the assistant header"
    if user is None:
        skipped["user_header"] = why
    else:
        out["user_header"] = user
    newline = encode_plain(tokenizer, "\n")
    if len(newline) == 1:
        out["newlines"] = (int(newline[0]),) * h
    else:
        skipped["newlines"] = f"a newline is {len(newline)} tokens in this tokenizer"
    pool = _ordinary_ids(tokenizer)
    out["random"] = tuple(int(t) for t in np.random.default_rng(seed).choice(pool, size=h, replace=False))
    return ControlSpans(out, offset, _prompt_suffix(tokenizer), skipped)
