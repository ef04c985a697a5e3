"""Random insertion rows: a short harmful span inserted into the model's own refusal, then continued by the model.

A row of kind ``insertion`` is made in two passes over a harmful prompt:

1. the model answers it (at most :data:`HOST_TOKENS` tokens); only answers the refusal judge calls refusals are
   kept as hosts;
2. the host is cut at a seeded word boundary, the record's harmful span (:func:`harmful_span`: the first line of
   its response or target, at most :data:`SPAN_WORDS` words) is forced after the cut, and the model continues.

The row is labelled per depth (:func:`depth_labels`): benign while the text holds no inserted character, harmful
from the first one on. So the same refusal opening appears on both sides of the label, and a probe cannot read
the label off the answer's surface form. ``meta["insertion"]`` records the span (``span``), its characters in the
response (``start``, ``end``) and the host.
"""

from __future__ import annotations

import random
import re

import numpy as np

HOST_TOKENS = 48  # the own answer the span is inserted into: at most this many tokens
SPAN_WORDS = 24  # the inserted span: at most this many words of the record's harmful text


def harmful_span(record) -> str | None:
    """The text to insert: the first non-empty line of the record's response (else its ``target``), at most
    :data:`SPAN_WORDS` words; None when the record holds no harmful text."""
    text = record.response or (record.meta or {}).get("target") or ""
    line = next((ln for ln in str(text).splitlines() if ln.strip()), "")
    words = line.split()
    return " ".join(words[:SPAN_WORDS]) or None


def cut_host(host: str, key: str) -> str:
    """``host`` up to a word boundary drawn with seed ``key`` (after its first word .. its whole text)."""
    ends = [m.end() for m in re.finditer(r"\S+", host)]
    if not ends:
        return ""
    return host[:ends[random.Random(key).randrange(len(ends))]]


def forced_text(head: str, span: str) -> str:
    """What the second pass forces: the cut host, a space, the span."""
    return f"{head} {span}" if head.strip() else span


def locate_span(text: str, span: str, near: int) -> tuple[int, int] | None:
    """Characters ``(start, end)`` of the inserted span in ``text``, searched from a few characters before
    ``near`` (where the cut host ends), or None when the decoding did not reproduce it."""
    start = str(text).find(span, max(0, int(near) - 8))
    return None if start < 0 else (start, start + len(span))


def depth_labels(labels: np.ndarray, spans: list[dict | None], response_chars: np.ndarray) -> np.ndarray:
    """Per-depth labels ``[N, D]`` int8. A row with a span (``{"start", ...}``: its first character in the
    response) is benign at depths whose text ends at or before ``start`` and harmful from the first inserted
    character on (as a harmful prefill is harmful from its opener's first token); every other row keeps its label
    at every depth."""
    out = np.repeat(np.asarray(labels, np.int8)[:, None], np.shape(response_chars)[1], axis=1)
    for i, span in enumerate(spans):
        if span is not None:
            out[i] = np.asarray(response_chars[i]) > int(span["start"])
    return out


def add_depth_labels(examples: dict, metas: list[dict]) -> None:
    """Give a store's example table (``label``, ``response``, ``response_chars``) per-depth labels,
    ``depth_label``, when any row was inserted into; leave it unchanged otherwise. Each span is found again in
    the stored response text (its offset was taken on the generator's decoding, which keeps special tokens); where
    it is not there, the recorded offset stands."""
    if not any("insertion" in (m or {}) for m in metas):
        return
    spans: list[dict | None] = []
    for meta, text in zip(metas, examples["response"]):
        span = (meta or {}).get("insertion")
        if span is not None:
            found = locate_span(text, span["span"], span["start"])
            span = {"start": found[0] if found else int(span["start"])}
        spans.append(span)
    examples["depth_label"] = depth_labels(examples["label"], spans, examples["response_chars"])
