"""From a spec to the rows it asks for: the records of each source (a seeded sample), grouped into tasks that
share one generation call, each row with a deterministic id. Reads the sources; writes nothing.

Row ids are ``<record id>#<kind>`` (``#prefill<j>`` for the j-th opener, from 0), so a rebuilt or resumed
corpus names every row the same way. Prompts are deduplicated by their protocol key for the generated kinds (a
source that repeats a question under several models holds it once); ``dataset`` rows need a non-empty response.
An insertion task carries each host's span (:meth:`Task.span`): the record's own harmful text, or, with the
entry's ``spans`` source, that of its twin (the harmful record sharing its pair id).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from interp import UserError
from interp.corpus.insertion import harmful_span
from interp.corpus.spec import CorpusSpec, Entry
from interp.data.records import BENIGN, HARMFUL, Record


@dataclass(frozen=True)
class Task:
    """Rows of one entry made by one kind of call: one opener for prefill, none otherwise."""

    entry_index: int  # 0-based position in the spec
    entry: Entry
    opener_index: int | None
    opener: str
    records: tuple[Record, ...]
    spans: tuple[tuple[str, str, str], ...] = ()  # insertion: (host record id, span, id of the span's record)

    def row_id(self, record_id: str) -> str:
        suffix = f"prefill{self.opener_index}" if self.entry.kind == "prefill" else self.entry.kind
        return f"{record_id}#{suffix}"

    def span(self, record_id: str) -> tuple[str, str]:
        """The span an insertion row inserts into the host of ``record_id``, and the id of the record it is from."""
        return next((s, d) for r, s, d in self.spans if r == record_id)


def twin_spans(entry: Entry, where: str = "corpus spec") -> dict[str, tuple[str, str]]:
    """Pair id -> (span, record id): the first harmful record of ``entry.spans`` per pair id with text to insert;
    a source without one is a one-line error."""
    from interp.data import load_dataset

    out: dict[str, tuple[str, str]] = {}
    for r in load_dataset(entry.spans):
        pair, span = (r.meta or {}).get("pair_id"), harmful_span(r)
        if r.label == HARMFUL and pair not in (None, "") and span and str(pair) not in out:
            out[str(pair)] = (span, r.id)
    if not out:
        raise UserError(f"{where} ({entry.name}): spans source {entry.spans!r} holds no harmful record with a pair id "
                        "and text to insert; use a twin of the host source (e.g. jbb_jailbroken for jbb_benign)")
    return out


def _pool(entry: Entry, records: list[Record], twins: dict | None = None) -> tuple[list[Record], str]:
    """The records an entry can draw from, and what they are called in an error (``twins``: benign insertion
    hosts, from :func:`twin_spans`)."""
    wanted = HARMFUL if entry.kind == "refusal" else BENIGN if entry.spans else entry.label
    pool = [r for r in records if r.label == wanted]
    if entry.kind == "dataset":
        return [r for r in pool if r.response], f"{wanted} records with a response"
    if entry.kind == "insertion" and entry.spans:  # the span comes from the host's twin in the spans source
        pool = [r for r in pool if str((r.meta or {}).get("pair_id")) in (twins or {})]
        return _distinct(pool), f"distinct {wanted} prompts with a twin in {entry.spans!r} (the same pair id)"
    if entry.kind == "insertion":  # the span to insert comes from the record's response or target
        pool = [r for r in pool if harmful_span(r)]
        what = f"distinct {wanted} prompts with a response or target to insert"
        return _distinct(pool), what
    return _distinct(pool), f"distinct {wanted} prompts"


def _task_spans(entry: Entry, records: list[Record], twins: dict | None) -> tuple[tuple[str, str, str], ...]:
    """Each insertion host's span and the record it is from."""
    if entry.kind != "insertion":
        return ()
    if entry.spans:
        return tuple((r.id, *twins[str(r.meta["pair_id"])]) for r in records)
    return tuple((r.id, harmful_span(r), r.id) for r in records)


def _distinct(pool: list[Record]) -> list[Record]:
    """The first record of each prompt (by its protocol key)."""
    from interp.probes.protocol import prompt_key

    seen: set[str] = set()
    unique = []
    for r in pool:
        key = prompt_key(r.prompt)
        if key not in seen:
            seen.add(key)
            unique.append(r)
    return unique


def select_records(entry: Entry, seed: int, where: str = "corpus spec", twins: dict | None = None) -> list[Record]:
    """A seeded sample of ``entry.count`` records (all when None), in the source's order.

    The sample is a prefix of one seeded shuffle per (source, split, prompt label), so two entries drawing on
    the same prompts (prefills and hard negatives of one harmful set) share them, the smaller inside the larger.
    """
    from interp.data import load_dataset

    pool, what = _pool(entry, load_dataset(entry.source, split=entry.split), twins)
    split = f" split {entry.split!r}" if entry.split else ""
    if not pool:
        raise UserError(f"{where} ({entry.name}): source {entry.source!r}{split} holds no {what}; "
                        "pick another source or label")
    if entry.count is None:
        return pool
    if entry.count > len(pool):
        raise UserError(f"{where} ({entry.name}): count {entry.count} is more than the source holds: "
                        f"{entry.source!r}{split} has {len(pool)} {what}; lower count or omit it to take all")
    order = list(range(len(pool)))
    random.Random(f"{seed}|{entry.source}|{entry.split}|{pool[0].label}").shuffle(order)
    return [pool[i] for i in sorted(order[:entry.count])]


def plan_corpus(spec: CorpusSpec, where: str = "corpus spec") -> list[Task]:
    """Every task of the spec in output order (entries in spec order, then openers); duplicate row ids refused."""
    tasks = []
    for i, entry in enumerate(spec.entries):
        twins = twin_spans(entry, f"{where}: entry {i + 1}") if entry.kind == "insertion" and entry.spans else None
        records = tuple(select_records(entry, spec.seed, f"{where}: entry {i + 1}", twins))
        if entry.kind == "prefill":
            tasks += [Task(i, entry, j, opener, records) for j, opener in enumerate(entry.openers)]
        else:
            tasks.append(Task(i, entry, None, "", records, _task_spans(entry, list(records), twins)))
    owner: dict[str, int] = {}
    for task in tasks:
        for rec in task.records:
            row = task.row_id(rec.id)
            if row in owner:
                first, this = owner[row] + 1, task.entry_index + 1
                raise UserError(f"{where}: entries {first} and {this} both make row {row!r} (overlapping splits "
                                "of one source); narrow one of them" if first != this else
                                f"{where}: entry {this} makes row {row!r} twice (its source repeats record id "
                                f"{rec.id!r}); give its records unique ids")
            owner[row] = task.entry_index
    return tasks
