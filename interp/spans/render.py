"""Chat-template plumbing for :mod:`interp.spans.derive`: template text and hash, rendering, in-context tokenizing.

Tokenizers may tokenize a string differently at the start of a text than after other text, so
:func:`token_range` locates a segment *inside* a whole rendered text (prefix tokenization, then offsets).
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Mapping

from interp import UserError

__all__ = ["template_hash", "tokenizer_sha256"]


def tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def one_line(err: BaseException | str) -> str:
    return " ".join(str(err).split())


def _template_text(tokenizer) -> str:
    tpl = getattr(tokenizer, "chat_template", None)
    if isinstance(tpl, Mapping):  # named templates: transformers uses "default" when none is asked for
        tpl = tpl.get("default")
    if not tpl or not isinstance(tpl, str):
        raise UserError(f"tokenizer {tokenizer_name(tokenizer)!r} has no chat template; load a chat (instruct) model's "
                        "tokenizer or set tokenizer.chat_template")
    return tpl


_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> (state, digest)


def tokenizer_sha256(tokenizer) -> str:
    """A fingerprint of how ``tokenizer`` maps text to ids: its vocabulary (with added tokens) and chat template.
    Continuations made with another tokenizer give other ids for the same text, and are refused on it. Hashing a
    large vocabulary takes ~0.3 s, so the digest is kept per tokenizer while its size and template stay the same
    (every generation batch stamps its rows with it)."""
    import json

    template = _template_text(tokenizer) if getattr(tokenizer, "chat_template", None) else ""
    state = (len(tokenizer), template)
    try:
        kept = _FINGERPRINTS.get(tokenizer)
    except TypeError:  # an object that cannot be weakly referenced: no memo
        kept = None
    if kept is not None and kept[0] == state:
        return kept[1]
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    digest = hashlib.sha256(json.dumps([vocab, template]).encode()).hexdigest()
    try:
        _FINGERPRINTS[tokenizer] = (state, digest)
    except TypeError:
        pass
    return digest


def template_hash(tokenizer) -> str:
    """sha256 hex digest of the tokenizer's chat template text (for provenance and override keys)."""
    return hashlib.sha256(_template_text(tokenizer).encode("utf-8")).hexdigest()


def render_chat(tokenizer, messages: list[dict], gen: bool) -> str:
    tpl = _template_text(tokenizer)
    try:
        out = tokenizer.apply_chat_template(messages, chat_template=tpl, tokenize=False,
                                            add_generation_prompt=gen)
    except Exception as err:  # jinja errors, raise_exception() in templates, …
        roles = "/".join(m["role"] for m in messages)
        raise UserError(f"chat template of {tokenizer_name(tokenizer)!r} failed to render a {roles} conversation: "
                        f"{one_line(err)}") from err
    if not isinstance(out, str):
        raise UserError(f"chat template of {tokenizer_name(tokenizer)!r} did not render to text")
    return out


def chat_messages(prompt: str, system: str | None = None, *rest: tuple[str, str]) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system is not None else []
    msgs.append({"role": "user", "content": prompt})
    msgs.extend({"role": r, "content": c} for r, c in rest)
    return msgs


def encode_text(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_plain(tokenizer, text: str) -> list[int]:
    """Ids of ``text`` with any special-token strings in it encoded as ordinary text (escaped)."""
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def holds_special(tokenizer, text: str) -> bool:
    """Whether ``text`` contains the string of one of the tokenizer's special or added tokens."""
    return any(s in text for s in special_strings(tokenizer))


def render_chat_ids(tokenizer, messages: list[dict], gen: bool, allow_special: bool = False) -> list[int]:
    """Ids of the rendered conversation. Special-token strings inside message contents are encoded as plain
    text unless ``allow_special`` (so a message cannot forge turns or the Safety-Token span); the template's
    own special tokens stay special. Contents without special strings encode exactly as the whole text does."""
    text = render_chat(tokenizer, messages, gen)
    forged = [i for i, m in enumerate(messages) if not allow_special and holds_special(tokenizer, m["content"])]
    if not forged:
        return encode_text(tokenizer, text)
    marks = {i: f"\ue000anydepth{i}\ue001" for i in forged}  # private-use marks: no template writes them
    marked = render_chat(tokenizer, [{**m, "content": marks.get(i, m["content"])} for i, m in enumerate(messages)],
                         gen)
    ids, cursor, rebuilt = [], 0, []
    for i in forged:
        at = marked.find(marks[i], cursor)
        if at < 0 or marked.count(marks[i]) != 1:
            at = -1
            break
        ids += encode_text(tokenizer, marked[cursor:at]) + encode_plain(tokenizer, messages[i]["content"])
        rebuilt += [marked[cursor:at], messages[i]["content"]]
        cursor = at + len(marks[i])
    rebuilt.append(marked[cursor:])
    if at < 0 or "".join(rebuilt) != text:
        raise UserError(f"chat template of {tokenizer_name(tokenizer)!r} rewrites message content, so the special "
                        "tokens in it cannot be escaped; remove them, or allow them (--allow-special-tokens)")
    return ids + encode_text(tokenizer, marked[cursor:])


def decode_ids(tokenizer, ids) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def char_offsets(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]] | None]:
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    except (NotImplementedError, ValueError, TypeError, KeyError):  # slow tokenizers have no offsets
        return encode_text(tokenizer, text), None


def decodes_to(tokenizer, ids: list[int], i: int, j: int, segment: str) -> bool:
    if decode_ids(tokenizer, ids[i:j]) == segment:
        return True
    # decoders that drop a leading space at the start of a text (SentencePiece) decode a piece on its own
    # differently; what counts is that the piece adds exactly ``segment`` to what precedes it.
    return i > 0 and decode_ids(tokenizer, ids[:j]) == decode_ids(tokenizer, ids[:i]) + segment


def token_range(tokenizer, text: str, cs: int, ce: int | None = None) -> tuple[list[int], int, int] | None:
    """Token ids of ``text`` and the token range ``[i, j)`` that covers exactly ``text[cs:ce]`` in context.

    ``None`` when no such range exists (a token crosses a boundary) or it does not decode back to the segment.
    """
    ce = len(text) if ce is None else ce
    segment = text[cs:ce]
    ids, offs = char_offsets(tokenizer, text)
    candidates: list[tuple[int, int]] = []
    # (1) prefix tokenization: the ids of text[:cs] (and text[:ce]) are a prefix of the ids of text
    pre = encode_text(tokenizer, text[:cs]) if cs else []
    upto = ids if ce == len(text) else encode_text(tokenizer, text[:ce])
    if ids[: len(pre)] == pre and ids[: len(upto)] == upto:
        candidates.append((len(pre), len(upto)))
    # (2) offsets: first token starting at/after each boundary, no token straddling it
    if offs is not None:
        def boundary(c: int) -> int | None:
            if c >= len(text):
                return len(ids)
            for k, (s, e) in enumerate(offs):
                if s < c < e:
                    return None
                if s >= c and e > s:
                    return k
            return len(ids)

        i, j = boundary(cs), boundary(ce)
        if i is not None and j is not None and (i, j) not in candidates:
            candidates.append((i, j))
    for i, j in candidates:
        if i < j and decodes_to(tokenizer, ids, i, j, segment):
            return ids, i, j
    return None


def special_strings(tokenizer) -> list[str]:
    out = set(getattr(tokenizer, "all_special_tokens", []) or [])
    try:
        out |= set(tokenizer.get_added_vocab())
    except Exception:  # noqa: BLE001 - not every tokenizer has added vocab
        pass
    return [s for s in out if s]


def back_off(text: str, b: int, specials: list[str]) -> int:
    """Move boundary ``b`` to the start of any special-token string in ``text`` that it cuts through."""
    moved = True
    while moved:
        moved = False
        for s in specials:
            start = text.find(s, max(0, b - len(s) + 1))
            while start != -1 and start < b:
                if start + len(s) > b:
                    b, moved = start, True
                    break
                start = text.find(s, start + 1)
    return b


def common_prefix_len(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def find_once(tokenizer, text: str, marker: str, what: str) -> int:
    if text.count(marker) != 1:
        raise UserError(f"chat template of {tokenizer_name(tokenizer)!r} does not render the {what} content verbatim; "
                        "give the span in a YAML override (interp/spans/span_overrides.yaml or overrides=)")
    return text.index(marker)
