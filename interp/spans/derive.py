"""Safety-Token spans derived from a tokenizer's chat template.

The *header* is the text a chat template appends for ``add_generation_prompt=True`` (``<|im_start|>assistant\\n``);
the *end of turn* is what follows an assistant message (``<|im_end|>\\n``). ADA-RK re-injects
``end_of_turn + header`` after d response tokens; ADA-LP reads the residual stream at the header's role token
(``assistant`` / ``model``). Nothing here is written per model: the strings are found by rendering the template
with marker messages and diffing the renders, then tokenized *in context* (inside a whole rendered conversation)
because some tokenizers tokenize a string differently at the start of a text than after other text.

Templates the derivation cannot handle (Mistral's ``[INST] … [/INST]`` format has no assistant header) are
covered by YAML overrides: ``interp/spans/span_overrides.yaml`` (shipped) and an optional user file
(``derive_safety_spans(tok, overrides=path)``), which is searched first.
Rendering and in-context tokenizing live in :mod:`interp.spans.render`, override files in
:mod:`interp.spans.overrides`; their public names are importable from here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from interp import UserError
from interp.spans.overrides import check_overrides, load_overrides, match_override
from interp.spans.render import (
    back_off,
    char_offsets,
    chat_messages,
    common_prefix_len,
    decode_ids,
    decodes_to,
    encode_plain,
    encode_text,
    find_once,
    holds_special,
    render_chat,
    render_chat_ids,
    special_strings,
    template_hash,
    token_range,
    tokenizer_name,
)

__all__ = [
    "SafetySpans",
    "derive_safety_spans",
    "encode_response",
    "format_conversation_ids",
    "format_prompt_ids",
    "format_prompt_text",
    "spans_json",
]

# Marker contents: letters only (so templates that ``trim`` content leave them alone), unlikely in any template.
USER_MARK = "QzqUserTurnMarkQzq"
ASSISTANT_MARK = "QzqAssistantTurnMarkQzq"
NEXT_USER_MARK = "QzqNextUserTurnMarkQzq"


@dataclass(frozen=True)
class SafetySpans:
    """The Safety-Token span of one chat template, with its in-context token ids."""

    header: str  # assistant header text, e.g. "<|im_start|>assistant\n"
    end_of_turn: str  # what follows an assistant message, e.g. "<|im_end|>\n"
    span_text: str  # end_of_turn + header: the re-injected span (ADA-RK)
    span_ids: tuple[int, ...]  # ids of span_text as tokenized in context right after an assistant response
    header_ids: tuple[int, ...]  # ids of the header in context (what ends a formatted prompt)
    probe_index: int  # index into span_ids of the probe position (ADA-LP)
    role_text: str  # decoded role token(s)
    template_hash: str  # sha256 hex of the chat template text
    source: str  # "derived" or "override:<key>"

    def __post_init__(self) -> None:
        object.__setattr__(self, "span_ids", tuple(int(i) for i in self.span_ids))
        object.__setattr__(self, "header_ids", tuple(int(i) for i in self.header_ids))
        object.__setattr__(self, "probe_index", int(self.probe_index))
        if self.span_text != self.end_of_turn + self.header:
            raise ValueError("SafetySpans: span_text must equal end_of_turn + header")
        if not 0 <= self.probe_index < len(self.span_ids):
            raise ValueError(f"SafetySpans: probe_index {self.probe_index} outside the {len(self.span_ids)} span ids")

    @property
    def probe_ids(self) -> tuple[int, ...]:
        """The probe span (ADA-LP): the span cut after the probe position."""
        return self.span_ids[: self.probe_index + 1]

    def to_dict(self) -> dict:
        """JSON-ready dict (lists for the id tuples)."""
        d = asdict(self)
        d["span_ids"] = list(self.span_ids)
        d["header_ids"] = list(self.header_ids)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SafetySpans:
        names = {f.name for f in fields(cls)}
        missing = names - set(d)
        if missing:
            raise ValueError(f"SafetySpans.from_dict: missing {', '.join(sorted(missing))}")
        return cls(**{k: d[k] for k in names})


# ---------------------------------------------------------------------------------------------------------------
# derivation


@dataclass
class MarkerRenders:
    """The template rendered around marker messages: the diffs between them locate every template string."""

    u: str  # [U]
    ug: str  # [U] + generation prompt
    uag: str  # [U, A] + generation prompt
    uav: str | None  # [U, A, V] (None when the template refuses it)


def marker_renders(tokenizer) -> MarkerRenders:
    """Renders of [U], [U]+generation prompt, [U, A]+generation prompt and [U, A, V] with the marker contents."""
    u = render_chat(tokenizer, chat_messages(USER_MARK), False)
    ug = render_chat(tokenizer, chat_messages(USER_MARK), True)
    uag = render_chat(tokenizer, chat_messages(USER_MARK, None, ("assistant", ASSISTANT_MARK)), True)
    try:
        uav = render_chat(tokenizer, chat_messages(USER_MARK, None, ("assistant", ASSISTANT_MARK), ("user", NEXT_USER_MARK)), False)
    except UserError:
        uav = None
    return MarkerRenders(u, ug, uag, uav)


def _derive_header(tokenizer, r: MarkerRenders) -> str:
    b = common_prefix_len(r.u, r.ug)
    b = back_off(r.ug, b, special_strings(tokenizer))  # e.g. phi3 renders eos '<|end|>' vs '<|assistant|>'
    header = r.ug[b:]
    if not header or b < find_once(tokenizer, r.ug, USER_MARK, "user") + len(USER_MARK):
        raise UserError(f"chat template of {tokenizer_name(tokenizer)!r} has no assistant header (add_generation_prompt "
                        "adds nothing); give end_of_turn/header in a YAML override: see interp/spans/span_overrides.yaml "
                        "or pass derive_safety_spans(..., overrides=FILE)")
    return header


def _derive_end_of_turn(tokenizer, r: MarkerRenders, header: str) -> str:
    a_end = find_once(tokenizer, r.uag, ASSISTANT_MARK, "assistant") + len(ASSISTANT_MARK)
    if not r.uag.endswith(header) or len(r.uag) - len(header) < a_end:
        raise UserError(f"chat template of {tokenizer_name(tokenizer)!r} does not end a conversation with the assistant "
                        "header when asked for a generation prompt after an assistant message; give the span in "
                        "a YAML override (interp/spans/span_overrides.yaml or overrides=)")
    eot = r.uag[a_end: len(r.uag) - len(header)]
    # Cross-check with the next turn: [U, A, V] must continue A with eot and then the same user opener that
    # precedes U in [U] (after any default system prompt).
    if r.uav is not None:
        between = r.uav[find_once(tokenizer, r.uav, ASSISTANT_MARK, "assistant") + len(ASSISTANT_MARK): r.uav.index(NEXT_USER_MARK)]
        opener = between[len(eot):]
        prefix_u = r.u[: r.u.index(USER_MARK)]
        if not between.startswith(eot) or not opener or not prefix_u.endswith(opener):
            raise UserError(f"chat template of {tokenizer_name(tokenizer)!r}: the text after an assistant message "
                            f"({between!r}) does not match the end of turn before a generation prompt ({eot!r}); "
                            "give the span in a YAML override (interp/spans/span_overrides.yaml or overrides=)")
    return eot


def _user_opener_ids(tokenizer, r: MarkerRenders, eot: str) -> list[int] | None:
    if r.uav is None:
        return None
    a_end = r.uav.find(ASSISTANT_MARK) + len(ASSISTANT_MARK)
    v = r.uav.find(NEXT_USER_MARK)
    if a_end < len(ASSISTANT_MARK) or v < a_end or not r.uav[a_end:v].startswith(eot) or v - a_end == len(eot):
        return None
    loc = token_range(tokenizer, r.uav, a_end + len(eot), v)
    return None if loc is None else loc[0][loc[1]: loc[2]]


def _role_range(header_ids: list[int], opener_ids: list[int]) -> tuple[int, int] | None:
    """``[p, q)``: the header tokens that differ from the user opener (the role), or None."""
    h, o = list(header_ids), list(opener_ids)
    p = common_prefix_len(h, o)
    if p >= len(h):
        return None
    # the opener is  pre + role_user + post ; the header is  pre + role_assistant + post (+ extras such as
    # '<think>\n'): the role ends where the longest tail of the opener shows up again in the header.
    for m in range(len(o) - p - 1, 0, -1):
        tail = o[len(o) - m:]
        for q in range(p + 1, len(h) - m + 1):
            if h[q: q + m] == tail:
                return p, q
    return p, p + 1


def _resolve_index(pp: str | int, n: int, role_index: int | None, tokenizer) -> int:
    if isinstance(pp, str) and pp.strip().lstrip("+-").isdigit():
        pp = int(pp.strip())
    if isinstance(pp, bool):
        raise UserError(f"probe_position must be 'role', 'last' or an integer, not {pp!r}")
    if pp == "role":
        if role_index is None:
            raise UserError(f"cannot find the role token in the assistant header of {tokenizer_name(tokenizer)!r}; pass "
                            "probe_position='last' or an index, or set probe_position in a YAML override")
        return role_index
    if pp == "last":
        return n - 1
    if isinstance(pp, int):
        idx = pp + n if pp < 0 else pp
        if not 0 <= idx < n:
            raise UserError(f"probe_position {pp} is out of range for a span of {n} tokens")
        return idx
    raise UserError(f"probe_position must be 'role', 'last' or an integer, not {pp!r}")


def derive_safety_spans(tokenizer, *, probe_position: str | int = "role",
                        overrides: str | Path | Mapping | None = None) -> SafetySpans:
    """Derive the Safety-Token span of ``tokenizer``'s chat template (see the module docstring).

    ``probe_position``: ``"role"`` (the last token of the header's role, e.g. ``assistant``; an override entry
    may say where that is for its template), ``"last"`` (last span token) or an index into the span ids
    (negative allowed). ``overrides``: a YAML file (or an already loaded mapping) searched before the packaged
    ``interp/spans/span_overrides.yaml``.
    """
    thash = template_hash(tokenizer)  # raises when there is no template
    tables = []
    if overrides is not None:
        tables.append(check_overrides(overrides, "overrides=") if isinstance(overrides, Mapping)
                      else load_overrides(overrides))
    tables.append(load_overrides(None))
    matches = match_override(tokenizer, thash, tables)

    r = marker_renders(tokenizer)
    derive_error: UserError | None = None
    header = eot = None
    try:
        header = _derive_header(tokenizer, r)
        eot = _derive_end_of_turn(tokenizer, r, header)
    except UserError as err:
        derive_error = err
    key, entry = _pick_override(matches, derive_error)
    if entry is not None:
        header, eot = _apply_override(tokenizer, r, key, entry, header, eot, derive_error)
        if probe_position == "role" and "probe_position" in entry:
            probe_position = entry["probe_position"]
    elif derive_error is not None:
        raise derive_error
    assert header is not None and eot is not None

    span_ids, h0, header_ids = _locate(tokenizer, r, header, eot)
    role_index, role_text = _role(tokenizer, r, eot, span_ids, h0)
    probe_index = _resolve_index(probe_position, len(span_ids), role_index, tokenizer)
    if not role_text:
        role_text = decode_ids(tokenizer, span_ids[probe_index: probe_index + 1])
    return SafetySpans(header=header, end_of_turn=eot, span_text=eot + header, span_ids=tuple(span_ids),
                       header_ids=tuple(header_ids), probe_index=probe_index, role_text=role_text,
                       template_hash=thash, source="derived" if entry is None else f"override:{key}")


def _pick_override(matches: list, derive_error: UserError | None) -> tuple[str | None, dict | None]:
    """The first matching override entry; generic (``fallback``) entries only where derivation failed."""
    for k, e in matches:
        if e.get("fallback") and derive_error is None:
            continue  # generic entries only stand in where the template itself says nothing
        return k, e
    return None, None


def _apply_override(tokenizer, r, key: str, entry: dict, header, eot, derive_error) -> tuple[str, str]:
    """The header and end of turn with ``entry``'s values in place of the derived ones, checked against the
    template's rendering."""
    header = entry.get("header", header)
    eot = entry.get("end_of_turn", eot)
    if header is None or eot is None:
        assert derive_error is not None
        raise derive_error
    if not header:
        raise UserError(f"span override {key!r}: header must not be empty")
    if not r.ug.endswith(header):
        raise UserError(f"span override {key!r}: header {header!r} does not end the prompt the chat template "
                        f"of {tokenizer_name(tokenizer)!r} renders ({r.ug[-40:]!r}); fix the override")
    return header, eot


def _locate(tokenizer, r, header: str, eot: str) -> tuple[list[int], int, list[int]]:
    """The span's token ids right after an assistant response, where the header starts inside them, and the
    header's ids as they end a formatted prompt."""
    span_text = eot + header
    a_end = find_once(tokenizer, r.uag, ASSISTANT_MARK, "assistant") + len(ASSISTANT_MARK)
    ctx = r.uag[:a_end] + span_text
    loc = token_range(tokenizer, ctx, a_end)
    hloc = token_range(tokenizer, ctx, len(ctx) - len(header)) if loc is not None else None
    if loc is None or hloc is None or not loc[1] <= hloc[1] < loc[2]:
        raise UserError(f"span {span_text!r} not found in the tokenized conversation of {tokenizer_name(tokenizer)!r} "
                        "(a token crosses its boundary); give the span in a YAML override")
    ids, i, j = loc
    span_ids = ids[i:j]
    h0 = hloc[1] - i  # header's first token inside the span
    ploc = token_range(tokenizer, r.ug, len(r.ug) - len(header)) if r.ug.endswith(header) else None
    header_ids = ploc[0][ploc[1]: ploc[2]] if ploc is not None else span_ids[h0:]
    return span_ids, h0, header_ids


def _role(tokenizer, r, eot: str, span_ids: list[int], h0: int) -> tuple[int | None, str]:
    """The index of the header's role token (its last token) in the span and the role's text, when the user
    turn's opener shows where the role sits."""
    opener_ids = _user_opener_ids(tokenizer, r, eot)
    if opener_ids:
        rr = _role_range(span_ids[h0:], opener_ids)
        if rr is not None:
            return h0 + rr[1] - 1, decode_ids(tokenizer, span_ids[h0 + rr[0]: h0 + rr[1]])
    return None, ""


# ---------------------------------------------------------------------------------------------------------------
# formatting prompts and responses


def format_prompt_text(tokenizer, prompt: str, system: str | None = None) -> str:
    """The chat-formatted user turn through the assistant header, as text."""
    return render_chat(tokenizer, chat_messages(prompt, system), True)


def format_prompt_ids(tokenizer, prompt: str, system: str | None = None, allow_special: bool = False) -> list[int]:
    """Ids of the chat-formatted user turn through the assistant header, exactly as the template renders it.

    The rendered text already holds any BOS the template writes, so it is encoded without adding special
    tokens (no double BOS). Special-token strings inside ``prompt`` / ``system`` are encoded as plain text
    unless ``allow_special`` (:func:`interp.spans.render.render_chat_ids`).
    """
    return render_chat_ids(tokenizer, chat_messages(prompt, system), True, allow_special)


def encode_response(tokenizer, prompt_ids: list[int], response: str, allow_special: bool = True) -> list[int]:
    """Ids of ``response`` as it tokenizes in context right after ``prompt_ids`` (the prompt ids are kept).
    ``allow_special=False`` encodes special-token strings in ``response`` as plain text."""
    if not response:
        return []
    if not allow_special and holds_special(tokenizer, response):
        return encode_plain(tokenizer, response)
    prompt_ids = [int(i) for i in prompt_ids]
    prompt_text = decode_ids(tokenizer, prompt_ids)
    text = prompt_text + response
    ids, offs = char_offsets(tokenizer, text)
    n = len(prompt_ids)
    if ids[:n] == prompt_ids and decodes_to(tokenizer, ids, n, len(ids), response):
        return ids[n:]
    if offs is not None:  # a token merges across the boundary: keep what starts after it, re-encode the rest
        b = len(prompt_text)
        k = next((t for t, (s, _) in enumerate(offs) if s >= b), len(ids))
        cut = max([e for s, e in offs[:k] if s < b < e] or [b])
        head = encode_text(tokenizer, text[b:cut]) if cut > b else []
        tail = [t for t, (s, _) in zip(ids, offs) if s >= cut]
        if decode_ids(tokenizer, head + tail) == response:
            return head + tail
    return encode_text(tokenizer, response)


def format_conversation_ids(tokenizer, prompt: str, response_ids: list[int] | str,
                            system: str | None = None) -> tuple[list[int], list[int]]:
    """``(prompt_ids, response_ids)``: the formatted prompt and the response (ids as given, or text tokenized in
    context after the prompt)."""
    prompt_ids = format_prompt_ids(tokenizer, prompt, system)
    if isinstance(response_ids, str):
        return prompt_ids, encode_response(tokenizer, prompt_ids, response_ids)
    return prompt_ids, [int(i) for i in response_ids]


def spans_json(spans: SafetySpans) -> str:
    """Compact JSON of ``spans`` (for HDF5 / probe provenance attributes)."""
    return json.dumps(spans.to_dict(), ensure_ascii=False, sort_keys=True)
