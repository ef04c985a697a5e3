"""The store's per-row table: ids, labels, sources, validity, end slots, the text each depth has seen and, for
insertion rows, the label at each depth."""

from __future__ import annotations

import os
from collections.abc import Sequence

from interp.corpus.insertion import add_depth_labels
from interp.generate.continuations import Continuation


def text_at_depths(tokenizer, items: Sequence[Continuation], depths: Sequence[int], progress: bool = False,
                   ends: Sequence[int] | None = None) -> dict[str, list]:
    """The response text of each item and, per depth, how many of its characters the first ``d`` response
    tokens decode to (the text a probe at depth d has seen; text-only baselines read exactly this); with
    ``ends`` also ``end_chars``, the characters at each item's end depth."""
    from tqdm.auto import tqdm

    texts, chars, end_chars = [], [], []

    def seen(ids: list[int], full: str, d: int) -> int:
        part = tokenizer.decode(ids[:min(int(d), len(ids))], skip_special_tokens=True) if d > 0 else ""
        return len(os.path.commonprefix([part, full]))

    for i, it in enumerate(tqdm(items, desc="decode text at depths", unit="ex",
                                disable=not progress or len(items) < 500)):
        ids = list(it.response_ids)
        full = tokenizer.decode(ids, skip_special_tokens=True)
        texts.append(full)
        chars.append([seen(ids, full, d) for d in depths])
        if ends is not None:
            end_chars.append(seen(ids, full, int(ends[i])))
    out = {"response": texts, "response_chars": chars}
    if ends is not None:
        out["end_chars"] = end_chars
    return out


def example_table(tokenizer, items: Sequence[Continuation], depths: Sequence[int], n_tokens, valid, ends,
                  progress: bool = False) -> dict[str, list]:
    """Everything :meth:`~interp.extract.store.ActivationStore.create` records per row: ids, labels, sources,
    kinds, prompts, validity, end slots, the text at each depth (:func:`text_at_depths`) and, when a row was
    inserted into, ``depth_label`` (:func:`interp.corpus.insertion.add_depth_labels`)."""
    table = {"id": [it.id for it in items], "label": [1 if it.label == "harmful" else 0 for it in items],
             "source": [it.source for it in items], "kind": [it.kind or "dataset" for it in items],
             "prompt": [it.prompt for it in items],
             "category": [it.category or "" for it in items], "n_response_tokens": n_tokens, "valid": valid,
             "pair_id": [str((it.meta or {}).get("pair_id") or "") for it in items],
             "end_depth": ends, "finished": [bool(it.finished) for it in items]}
    table.update(text_at_depths(tokenizer, items, depths, progress=progress, ends=ends))
    add_depth_labels(table, [it.meta for it in items])  # insertion rows: benign before the span, harmful after
    return table
