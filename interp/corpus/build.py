"""Build a corpus: every task of the plan in batches, own generations through the one batched generator
(:func:`interp.generate.continuations.generate_continuations`), rows written through the :class:`Journal`.

The rows are :class:`~interp.generate.continuations.Continuation` records, so ``anydepth extract`` reads the
JSONL unchanged; each carries its ``source`` (``<dataset>:<kind>`` for own generations, as ``anydepth generate``
names them; the dataset for third-party responses), ``kind``, ``opener`` and ``label``, and ``meta`` adds
``corpus_entry`` (1-based) and ``corpus_source``. Batches are fixed by the plan and the batch size and each is
seeded by its position, so a resumed build regenerates a torn batch exactly as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import interp
from interp import UserError
from interp.corpus.journal import ROWS, Journal, read_lines
from interp.corpus.plan import Task, plan_corpus
from interp.corpus.spec import CorpusSpec
from interp.data.records import BENIGN, HARMFUL
from interp.generate.continuations import GEN_DTYPES
from interp.model.context import TOO_LONG

IDENTITY_KEYS = ("model_id", "weights_sha256", "tokenizer_sha256", "dtype")


@dataclass
class CorpusConfig:
    """Options of ``anydepth corpus`` (the spec file says what to build; these say how)."""

    spec: str = field(default="default", metadata={
        "help": "corpus spec (YAML/JSON file) or a shipped one: default (the full recipe), demo (CPU size)"})
    out: str | None = field(default=None, metadata={
        "help": "output folder (default runs/corpus/<model>-<spec name>-<spec hash>); rerun to resume"})
    gen_batch_size: int = field(default=8, metadata={"help": "prompts per generate call (continuous batching)"})
    gen_dtype: str = field(default="model", metadata={
        "help": "dtype to decode in: model (as loaded), bfloat16 or float32 (a cast copy; bf16 decodes faster on "
                "CPUs with AVX-512 BF16 or AMX, and the continuations are then the bf16 model's)", "choices": GEN_DTYPES})
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


def _rows(model, tokenizer, spec: CorpusSpec, batch: Batch, too_long: str, judge, gen_dtype: str = "model"
          ) -> list[dict[str, Any]]:
    from interp.generate.continuations import from_records, generate_continuations

    task, entry = batch.task, batch.task.entry
    if entry.kind == "dataset":
        made = from_records(batch.records, tokenizer, system=spec.system)
    else:
        made = generate_continuations(
            model, tokenizer, batch.records, mode="prefill" if entry.kind == "prefill" else "own",
            opener=task.opener, max_new_tokens=spec.tokens_for(entry), do_sample=spec.sample,
            temperature=spec.temperature, top_p=spec.top_p, seed=batch.seed, batch_size=len(batch.records),
            system=spec.system, progress=False, too_long=too_long, skipped=[], dtype=gen_dtype)
    rows = []
    for item in made:
        if entry.kind == "refusal":
            if not judge(item.response):
                continue
            item.kind, item.label = "refusal", BENIGN
            base = item.source.removesuffix("own").removesuffix(":")
            item.source = f"{base}:refusal" if base else "refusal"
            item.meta["prompt_label"] = HARMFUL
        item.meta.update(corpus_entry=task.entry_index + 1, corpus_source=entry.source)
        item.id = task.row_id(item.id)
        rows.append(item.to_dict())
    return rows


def _summary(spec: CorpusSpec, tasks: list[Task], out: Path) -> dict[str, Any]:
    """Rows per entry, read back from the finished file (so a resumed build reports what an uninterrupted does)."""
    written: dict[int, int] = {}
    for row in read_lines(out / ROWS):
        index = row["meta"]["corpus_entry"]
        written[index] = written.get(index, 0) + 1
    entries = []
    for i, entry in enumerate(spec.entries):
        planned = sum(len(t.records) for t in tasks if t.entry_index == i)
        entries.append({"entry": i + 1, "name": entry.name, "label": entry.label, "planned": planned,
                        "rows": written.get(i + 1, 0)})
    return {"entries": entries, "rows": sum(written.values())}


def build_corpus(model, tokenizer, spec: CorpusSpec, out: str | Path, *, model_provenance: dict[str, Any],
                 batch_size: int = 8, too_long: str = "truncate", gen_dtype: str = "model",
                 run_config: dict[str, Any] | None = None,
                 progress: bool = True, judge: Callable[[str], bool] | None = None,
                 tasks: list[Task] | None = None) -> dict[str, Any]:
    """Build (or resume) the corpus of ``spec`` into folder ``out``; returns its provenance and row counts.

    ``judge`` says whether an own answer is a refusal (default: the keyword judge of
    :mod:`interp.guard.refusal` for the model's family); ``tasks`` is the plan when the caller made it already.
    """
    from tqdm.auto import tqdm

    from interp.guard.refusal import KeywordMatcher

    out = Path(out)
    tasks = plan_corpus(spec) if tasks is None else tasks
    plan = batches(tasks, batch_size, spec.seed)
    order = {t.row_id(r.id): n for n, (t, r) in enumerate((t, r) for t in tasks for r in t.records)}
    identity = {**{k: model_provenance.get(k) for k in IDENTITY_KEYS}, "gen_batch_size": batch_size,
                "gen_dtype": gen_dtype, "too_long": too_long, "package_version": interp.__version__}
    provenance = {"spec": spec.to_dict(), "model_provenance": model_provenance, "config": run_config or {}}
    journal = Journal.open(out, spec.canonical_json(), spec.sha256(), identity, provenance, order)
    if journal.complete:
        return journal.config
    if judge is None:
        judge = KeywordMatcher(getattr(model.config, "model_type", None) or "default")
    for i, entry in enumerate(spec.entries):
        mine = [b for b in plan if b.task.entry_index == i]
        bar = tqdm(total=sum(len(b.records) for b in mine), desc=f"corpus {i + 1}/{len(spec.entries)} {entry.name}",
                   unit="row", disable=not progress)
        for batch in mine:
            if batch.key not in journal.done:
                journal.append(batch.key, _rows(model, tokenizer, spec, batch, too_long, judge, gen_dtype))
            bar.update(len(batch.records))
        bar.close()
    journal.finish(_summary(spec, tasks, out))
    return journal.config
