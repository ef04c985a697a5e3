"""The corpus folder on disk and its crash-safe resume.

A folder holds ``continuations.jsonl`` (the rows, in plan order), ``corpus_spec.json`` (the spec as canonical
JSON; its sha256 is the spec's), ``continuations.config.json`` (provenance: spec sha256, model, build options,
status and, once complete, the rows per entry) and, while building, ``corpus.progress.jsonl`` (one line per
finished batch). Rows and progress lines are appended with one write each and fsync'd, rows first; a
restart cuts a torn last line, skips finished batches and rows already written, and refuses a different spec
or build identity. So a killed build, resumed, ends in the same bytes as one never interrupted.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from interp import UserError

ROWS = "continuations.jsonl"
CONFIG = "continuations.config.json"
SPEC = "corpus_spec.json"
PROGRESS = "corpus.progress.jsonl"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def append_lines(path: Path, lines: list[str]) -> None:
    """Append ``lines`` to ``path`` in one write, then fsync."""
    if not lines:
        return
    with open(path, "ab") as fh:
        fh.write("".join(lines).encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of ``path``; a torn last line (no newline: the writer was killed) is cut off."""
    if not path.exists():
        return []
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(cut)
            fh.flush()
            os.fsync(fh.fileno())
    out = []
    for n, line in enumerate(data[:cut].decode("utf-8").splitlines(), 1):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{n}: not a JSON line ({err.msg}); the corpus folder is damaged, "
                            "build into a fresh --out") from None
    return out


LOCK = ".lock"


@contextmanager
def build_lock(out: Path):
    """Hold an exclusive lock on corpus folder ``out`` while building it: a second build into the same folder
    gets a one-line error instead of writing duplicate rows (an advisory ``flock`` on ``out/.lock``, released by
    the OS if the process dies; no lock where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK, "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise UserError(f"{out} is being built by {holder}; wait for it to finish (rerunning then resumes or "
                            "returns the finished corpus) or use another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        try:
            yield
        finally:  # the folder ends as it would without the lock (a finished build leaves no .lock)
            (out / LOCK).unlink(missing_ok=True)
            fcntl.flock(fh, fcntl.LOCK_UN)


class Journal:
    """Writes one corpus folder; :meth:`open` starts it or checks that a restart continues the same build."""

    def __init__(self, out: Path, config: dict[str, Any], row_ids: set[str], done: set[str]):
        self.out, self.config = out, config
        self.row_ids, self.done = row_ids, done

    @property
    def complete(self) -> bool:
        return self.config.get("status") == "complete"

    @classmethod
    def open(cls, out: Path, spec_json: str, spec_sha256: str, identity: dict[str, Any],
             provenance: dict[str, Any], plan_order: dict[str, int]) -> Journal:
        """Start ``out`` or resume it; ``plan_order`` maps every planned row id to its position."""
        out = Path(out)
        config_path = out / CONFIG
        if config_path.exists():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                raise UserError(f"{config_path} is not JSON; the corpus folder is damaged, build into a fresh "
                                "--out") from None
            _check_same(out, config, spec_sha256, identity)
        elif (out / ROWS).exists() or (out / PROGRESS).exists():
            raise UserError(f"{out} holds {ROWS} but no {CONFIG}: not a corpus build folder; pick another --out")
        else:
            out.mkdir(parents=True, exist_ok=True)
            write_atomic(out / SPEC, spec_json)
            config = {**provenance, "spec_sha256": spec_sha256, "identity": identity, "status": "building"}
            write_atomic(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")
        rows = read_lines(out / ROWS)
        last = -1
        for n, row in enumerate(rows, 1):
            position = plan_order.get(row.get("id"))
            if position is None or position <= last:
                problem = "is not planned by this spec" if position is None else "is out of order or repeated"
                raise UserError(f"{out / ROWS}:{n}: row {row.get('id')!r} {problem}; the folder is damaged, "
                                "build into a fresh --out")
            last = position
        on_disk = {r["id"] for r in rows}
        # a batch is done when its progress line says so and its rows are on disk (a rows file cut back by hand or
        # by a failing disk would otherwise lose them silently; lines of older builds carry no ids)
        done = {str(p["batch"]) for p in read_lines(out / PROGRESS) if set(p.get("ids", ())) <= on_disk}
        return cls(out, config, on_disk, done)

    def append(self, key: str, rows: list[dict[str, Any]]) -> int:
        """Write the batch's rows not yet on disk, then mark batch ``key`` done; returns rows written now."""
        new = [r for r in rows if r["id"] not in self.row_ids]
        append_lines(self.out / ROWS, [json.dumps(r, ensure_ascii=False) + "\n" for r in new])
        self.row_ids.update(r["id"] for r in new)
        append_lines(self.out / PROGRESS, [json.dumps({"batch": key, "rows": len(rows),
                                                       "ids": [r["id"] for r in rows]}) + "\n"])
        self.done.add(key)
        return len(new)

    def finish(self, summary: dict[str, Any]) -> None:
        """Record the rows per entry, mark the build complete and drop the progress file."""
        self.config = {**self.config, **summary, "status": "complete"}
        write_atomic(self.out / CONFIG, json.dumps(self.config, indent=2, sort_keys=True) + "\n")
        (self.out / PROGRESS).unlink(missing_ok=True)


def _check_same(out: Path, config: dict[str, Any], spec_sha256: str, identity: dict[str, Any]) -> None:
    made = config.get("spec_sha256")
    if made != spec_sha256:
        raise UserError(f"{out} was built from another corpus spec (sha256 {str(made)[:12]}…, this one "
                        f"{spec_sha256[:12]}…; saved as {out / SPEC}); resume with that spec or use another --out")
    before = config.get("identity") or {}
    for key, value in identity.items():
        if before.get(key) != value:
            raise UserError(f"{out} was started with {key}={before.get(key)!r}, this run has {value!r}; resume "
                            "with the same model and options or use another --out")
