"""Build a corpus: every task of the plan in batches, own generations through the one batched generator
(:func:`interp.generate.continuations.generate_requests`), rows written through the :class:`Journal`.

The rows are :class:`~interp.generate.continuations.Continuation` records, so ``anydepth extract`` reads the
JSONL unchanged; each carries its ``source`` (``<dataset>:<kind>`` for own generations, as ``anydepth generate``
names them; the dataset for third-party responses), ``kind``, ``opener`` and ``label``, and ``meta`` adds
``corpus_entry`` (1-based) and ``corpus_source``. Batches are fixed by the plan and the batch size and each is
seeded by its position; own-generation batches are decoded together in fixed waves of at least ``4 x
--gen-batch-size`` rows (so entries of a few prompts still fill the batch), and a resumed build decodes a torn
wave with the same rows as before and writes only the batches the journal lacks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import interp
from interp import UserError
from interp.corpus.journal import ROWS, Journal, build_lock, read_lines
from interp.corpus.plan import Task, plan_corpus
from interp.corpus.spec import CorpusSpec
from interp.data.records import HARMFUL
from interp.generate.continuations import GEN_DTYPES
from interp.model.context import TOO_LONG

IDENTITY_KEYS = ("model_id", "weights_sha256", "tokenizer_sha256", "dtype")


@dataclass
class CorpusConfig:
    """Options of ``anydepth corpus`` (the spec file says what to build; these say how)."""

    spec: str = field(default="default", metadata={
        "help": "corpus spec (YAML/JSON file) or a shipped one: default (the full recipe), demo (CPU size), causal "
                "(matched-opener pairs for patch/ablate), positions (prompt-controlled pairs for `anydepth positions`)"})
    out: str | None = field(default=None, metadata={
        "help": "output folder (default runs/corpus/<model>-<spec name>-<spec hash>); rerun to resume"})
    gen_batch_size: int = field(default=8, metadata={"help": "prompts per generate call (continuous batching)"})
    gen_dtype: str = field(default="model", metadata={
        "help": "dtype to decode in: model (as loaded), bfloat16 or float32 (a cast copy; the continuations are then "
                "that copy's), or auto: bfloat16 on CUDA and on CPUs with AVX-512 BF16/AMX, else float32",
        "choices": GEN_DTYPES})
    too_long: str = field(default="truncate", metadata={
        "help": "prompt + opener + new tokens + span beyond the model context: truncate, skip or error",
        "choices": TOO_LONG})

    def validate(self) -> None:
        if self.gen_batch_size < 1:
            raise UserError(f"--gen-batch-size must be >= 1, got {self.gen_batch_size}")
        if self.gen_dtype not in GEN_DTYPES:
            raise UserError(f"--gen-dtype must be one of {', '.join(GEN_DTYPES)}, got {self.gen_dtype!r}")


@dataclass(frozen=True)
class Batch:
    key: str  # "<entry>/<opener>/<batch>", the progress file's name for it
    task: Task
    records: tuple
    seed: int


def batches(tasks: list[Task], batch_size: int, seed: int) -> list[Batch]:
    """Fixed batches of each task in plan order; batch ``k`` overall samples with seed ``seed + k * batch_size``."""
    out = []
    for task in tasks:
        for start in range(0, len(task.records), batch_size):
            key = f"{task.entry_index + 1}/{task.opener_index or 0}/{start // batch_size}"
            out.append(Batch(key, task, task.records[start:start + batch_size], seed + len(out) * batch_size))
    return out


def _request(spec: CorpusSpec, batch: Batch, too_long: str):
    """The generation request of one own-generation batch (seeded by the batch's position, as if decoded alone)."""
    from interp.generate.continuations import Request

    task, entry = batch.task, batch.task.entry
    return Request(batch.records, mode="prefill" if entry.kind == "prefill" else "own", opener=task.opener,
                   max_new_tokens=spec.tokens_for(entry), do_sample=spec.sample, temperature=spec.temperature,
                   top_p=spec.top_p, seed=batch.seed, system=spec.system, too_long=too_long, skipped=[])


def continuation_text(item) -> str:
    """What the model wrote after a forced opener (the whole response when nothing was forced)."""
    text = item.response or ""
    if item.opener and text.lstrip().startswith(item.opener.strip()):
        return text.lstrip()[len(item.opener.strip()):]
    return text


def _keep(entry, item, judge) -> bool:
    """Label hygiene: a refusal entry keeps only the answers the judge calls refusals; a harmful prefill or
    insertion entry drops continuations that recovered into a refusal (a harmful label on a refusal would
    contradict the own refusals labelled benign); an insertion row whose span the decoding lost is dropped.
    Everything else is kept."""
    if entry.kind == "refusal":
        return judge(item.response)
    if entry.kind == "insertion":
        span = item.meta.get("insertion")
        return span is not None and not judge(item.response[span["end"]:])
    if entry.kind == "prefill" and entry.label == HARMFUL:
        return not judge(continuation_text(item))
    return True


def _rows(batch: Batch, made: list, judge) -> list[dict[str, Any]]:
    """The journal rows of one batch from its continuations (filtered by :func:`_keep`)."""
    task, entry = batch.task, batch.task.entry
    rows = []
    for item in made:
        if not _keep(entry, item, judge):
            continue
        if entry.kind in ("refusal", "insertion"):
            base = item.source.rsplit(":", 1)[0] if ":" in item.source else ""
            item.kind = entry.kind
            item.source = f"{base}:{entry.kind}" if base else entry.kind
            item.meta["prompt_label"] = item.label  # the prompt's: harmful, or benign for a benign host
            item.label = entry.label
        item.meta.update(corpus_entry=task.entry_index + 1, corpus_source=entry.source)
        item.id = task.row_id(item.id)
        rows.append(item.to_dict())
    return rows


def _insertion_requests(model, tokenizer, spec: CorpusSpec, inserted: list[Batch], too_long: str, batch_size: int,
                        gen_dtype: str, judge) -> list[tuple]:
    """The second pass of insertion batches (:mod:`interp.corpus.insertion`): each prompt's own answer (first
    pass, at most ``HOST_TOKENS``), kept when the judge calls it a refusal (every answer to a benign prompt is
    kept), cut at a seeded word boundary with the task's span forced after the cut.
    ``(batch key, request, head, (span, its record id), host)`` per kept prompt."""
    from interp.corpus.insertion import HOST_TOKENS, cut_host, forced_text
    from interp.generate.continuations import generate_requests

    hosts = generate_requests(model, tokenizer, [replace(_request(spec, b, too_long), mode="own",
                                                         max_new_tokens=HOST_TOKENS) for b in inserted],
                              batch_size=batch_size, progress=False, dtype=gen_dtype)
    out = []
    for batch, answers in zip(inserted, hosts):
        by_id = {a.id: a for a in answers}
        for k, rec in enumerate(batch.records):
            host = by_id.get(rec.id)
            if host is None or (not batch.task.entry.spans and not judge(host.response)):
                continue  # skipped for length, or not a refusal to insert into
            head, span = cut_host(host.response, f"{spec.seed}|{batch.task.row_id(rec.id)}"), batch.task.span(rec.id)
            request = replace(_request(spec, batch, too_long), records=(rec,), mode="prefill",
                              opener=forced_text(head, span[0]), seed=batch.seed + k)
            out.append((batch.key, request, head, span, host.response))
    return out


def _decode_wave(model, tokenizer, spec: CorpusSpec, own: list[Batch], too_long: str, batch_size: int,
                 gen_dtype: str, bar, judge, trace=None) -> dict[str, list]:
    """The continuations of a wave's own-generation batches, decoded together (insertion batches after their
    first pass); the bar advances per finished answer and per prompt an insertion batch did not continue.
    ``trace``: a :class:`~interp.generate.decode.DecodeTrace` of the wave's (last) decode."""
    from interp.corpus.insertion import locate_span
    from interp.generate.continuations import generate_requests

    plain = [b for b in own if b.task.entry.kind != "insertion"]
    inserted = [b for b in own if b.task.entry.kind == "insertion"]
    second = _insertion_requests(model, tokenizer, spec, inserted, too_long, batch_size, gen_dtype,
                                 judge) if inserted else []
    made = generate_requests(model, tokenizer, [_request(spec, b, too_long) for b in plain] + [s[1] for s in second],
                             batch_size=batch_size, progress=False, dtype=gen_dtype, bar=bar, trace=trace)
    out = dict(zip((b.key for b in plain), made))
    out.update((b.key, []) for b in inserted)
    for (key, _, head, span, host), items in zip(second, made[len(plain):]):
        for item in items:
            at = locate_span(item.response, span[0], len(head.rstrip()))  # None: the row is dropped
            if at is not None:
                item.meta["insertion"] = {"start": at[0], "end": at[1], "span": span[0], "host": host,
                                          "span_record": span[1]}
            out[key].append(item)
    bar.update(sum(len(b.records) for b in inserted) - len(second))
    return out


def wave_report(trace, seconds: float) -> str:
    """One line on a decoded wave: its tokens, seconds and rate, then where the decode's time went (engine, rows
    in flight, prefills, full and draining steps: :meth:`~interp.generate.decode.DecodeTrace.summary`)."""
    tokens = sum(p["tokens"] for p in trace.phases().values())
    return f"{tokens:.0f} tokens in {seconds:.0f} s ({tokens / max(seconds, 1e-9):.1f} tokens/s); {trace.summary()}"


def waves(plan: list[Batch], rows: int) -> list[list[Batch]]:
    """The plan cut into consecutive slices, each closed once it holds ``rows`` own-generation rows (the last may
    hold fewer); a slice's own generations are decoded together, so entries of a few prompts share full batches,
    and its batches are journaled in plan order. Slices depend only on the plan, so a resumed build decodes a torn
    slice with the same rows beside each other."""
    out: list[list[Batch]] = []
    wave: list[Batch] = []
    generated = 0
    for batch in plan:
        wave.append(batch)
        if batch.task.entry.kind != "dataset":
            generated += len(batch.records)
        if generated >= rows:
            out.append(wave)
            wave, generated = [], 0
    if wave:
        out.append(wave)
    return out


def _summary(spec: CorpusSpec, tasks: list[Task], out: Path) -> dict[str, Any]:
    """Rows per entry, read back from the finished file (so a resumed build reports what an uninterrupted does)."""
    written: dict[int, int] = {}
    for row in read_lines(out / ROWS):
        index = row["meta"]["corpus_entry"]
        written[index] = written.get(index, 0) + 1
    entries = []
    for i, entry in enumerate(spec.entries):
        planned = sum(len(t.records) for t in tasks if t.entry_index == i)
        row = {"entry": i + 1, "name": entry.name, "label": entry.label, "planned": planned,
               "rows": written.get(i + 1, 0)}
        if entry.kind == "refusal":
            row["dropped_not_refusals"] = planned - row["rows"]
        elif entry.kind == "insertion":
            row["dropped_not_refusals_or_recovered"] = planned - row["rows"]
        elif entry.kind == "prefill" and entry.label == HARMFUL:
            row["dropped_recovered_refusals"] = planned - row["rows"]
        entries.append(row)
    return {"entries": entries, "rows": sum(written.values()),
            "dropped_recovered_refusals": sum(e.get("dropped_recovered_refusals", 0) for e in entries),
            "label_hygiene": "harmful prefill continuations the refusal judge calls refusals are dropped (the model "
                             "recovered); refusal entries keep only answers it calls refusals; insertion entries "
                             "keep only refusals as hosts (every answer, for benign hosts) and drop continuations "
                             "that recovered after the span"}


def write_corpus(model, tokenizer, spec: CorpusSpec, out: str | Path, *, model_provenance: dict[str, Any],
                 batch_size: int = 8, too_long: str = "truncate", gen_dtype: str = "model",
                 run_config: dict[str, Any] | None = None, wave_rows: int | None = None,
                 progress: bool = True, judge: Callable[[str], bool] | None = None,
                 tasks: list[Task] | None = None) -> dict[str, Any]:
    """Build (or resume) the corpus of ``spec`` into folder ``out``; returns its provenance and row counts.

    ``judge`` says whether an own answer is a refusal (default: the keyword judge of
    :mod:`interp.guard.refusal` for the model's family); ``tasks`` is the plan when the caller made it already.
    """
    from tqdm.auto import tqdm

    from interp.generate.continuations import from_records, resolve_gen_dtype
    from interp.generate.decode import DecodeTrace, default_engine
    from interp.guard.refusal import KeywordMatcher

    out = Path(out)
    gen_dtype = resolve_gen_dtype(gen_dtype, next(model.parameters()).device)
    tasks = plan_corpus(spec) if tasks is None else tasks
    plan = batches(tasks, batch_size, spec.seed)
    order = {t.row_id(r.id): n for n, (t, r) in enumerate((t, r) for t in tasks for r in t.records)}
    wave_rows = wave_rows or 4 * batch_size
    identity = {**{k: model_provenance.get(k) for k in IDENTITY_KEYS}, "gen_batch_size": batch_size,
                "gen_wave_rows": wave_rows, "gen_dtype": gen_dtype, "gen_engine": default_engine(model),
                "too_long": too_long, "package_version": interp.__version__}
    provenance = {"spec": spec.to_dict(), "model_provenance": model_provenance, "config": run_config or {}}
    with build_lock(out):  # a second build into the same folder is refused, not interleaved
        journal = Journal.open(out, spec.canonical_json(), spec.sha256(), identity, provenance, order)
        if journal.complete:
            return journal.config
        if judge is None:
            judge = KeywordMatcher(getattr(model.config, "model_type", None) or "default")
        todo = [w for w in waves(plan, wave_rows) if any(b.key not in journal.done for b in w)]
        bar = tqdm(total=sum(len(b.records) for b in plan), desc=f"corpus {spec.name}", unit="row",
                   disable=not progress)
        bar.update(sum(len(b.records) for b in plan) - sum(len(b.records) for w in todo for b in w))
        for k, wave in enumerate(todo, 1):
            own = [b for b in wave if b.task.entry.kind != "dataset"]  # all of them: a torn wave decodes as before
            names = sorted({b.task.entry.name for b in own})
            bar.set_postfix_str(", ".join(names) if len(names) <= 3 else f"{len(names)} entries", refresh=True)
            trace, start = (DecodeTrace() if progress else None), time.perf_counter()  # traced only to be printed
            made = _decode_wave(model, tokenizer, spec, own, too_long, batch_size, gen_dtype, bar,
                                judge, trace) if own else {}
            if own and trace is not None:
                bar.write(f"wave {k}/{len(todo)}: {wave_report(trace, time.perf_counter() - start)}")
            for batch in wave:
                if batch.key not in journal.done:
                    items = made[batch.key] if batch.key in made else from_records(batch.records, tokenizer,
                                                                                     system=spec.system)
                    journal.append(batch.key, _rows(batch, items, judge))
                if batch.key not in made:
                    bar.update(len(batch.records))
        bar.close()
        journal.finish(_summary(spec, tasks, out))
        return journal.config
