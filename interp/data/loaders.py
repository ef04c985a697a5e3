"""Strict readers for CSV / JSONL / JSON / TXT files and the generic :func:`load_file`.

Readers yield ``(line_number, row)`` so every error can name the file and line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from interp import UserError
from interp.data.records import Record, normalize_label

PROMPT_FIELDS = ("prompt", "goal", "instruction", "question", "behavior", "query", "input", "text")
RESPONSE_FIELDS = ("response", "output", "completion", "answer")
SUFFIXES = (".csv", ".jsonl", ".json", ".txt")


def read_csv(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a headed CSV as dicts; a row with the wrong number of fields is an error (file:line)."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise UserError(f"{path}: empty CSV file (expected a header row)") from None
        except csv.Error as err:
            raise UserError(f"{path}:{reader.line_num}: malformed CSV: {err}") from None
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                raise UserError(f"{path}:{start}: malformed CSV row: {err}") from None
            if not row:
                continue
            if len(row) != len(header):
                raise UserError(f"{path}:{start}: malformed CSV row: expected {len(header)} fields "
                                f"({','.join(header)}), got {len(row)}")
            yield start, dict(zip(header, row))


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8-sig") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{number}: malformed JSONL row: {err.msg}") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{number}: malformed JSONL row: expected an object, "
                                f"got {type(row).__name__}")
            yield number, row


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return json.load(fh)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: malformed JSON: {err.msg}") from None


def _json_items(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Objects of a JSON list (or of the single list inside a top-level object); 'line' = item index."""
    data = read_json(path)
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise UserError(f"{path}: expected a JSON list of objects or an object holding exactly one list")
        data = lists[0]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise UserError(f"{path}: item {index}: expected an object, got {type(item).__name__}")
        yield index, item


def _read_txt(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    with open(path, encoding="utf-8-sig") as fh:
        for number, line in enumerate(fh, start=1):
            if line.strip():
                yield number, {"prompt": line.rstrip("\r\n")}


def check_utf8(path: Path) -> None:
    """One-line error for a file that is not UTF-8 text (a byte-order mark is fine: files are read as utf-8-sig)."""
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte offset {err.start}: {err.reason}); re-save the file as "
                        "UTF-8") from None


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    check_utf8(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_csv(path)
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix == ".json":
        return _json_items(path)
    if suffix == ".txt":
        return _read_txt(path)
    raise UserError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)}")


def _pick_field(columns: list[str], wanted: str | None, candidates: tuple[str, ...], path: Path,
                kind: str) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise UserError(f"{path}: no {kind} field {wanted!r}; fields are {', '.join(columns)}")
        return wanted
    lower = {c.lower(): c for c in columns}
    return next((lower[c] for c in candidates if c in lower), None)


def load_file(path: str | Path, *, prompt_field: str | None = None, response_field: str | None = None,
              label: str | None = None, label_field: str | None = None, source: str | None = None
              ) -> list[Record]:
    """Records from a CSV/JSONL/JSON/TXT file (TXT: one prompt per non-empty line).

    ``prompt_field``/``response_field`` default to the first of :data:`PROMPT_FIELDS` /
    :data:`RESPONSE_FIELDS` present. The label is ``label`` for every row, else read from ``label_field``
    (default: a ``label`` column) with harmful/unsafe/1 and benign/safe/0 accepted.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    fixed = normalize_label(label, str(path)) if label is not None else None
    source = source if source is not None else path.name
    records: list[Record] = []
    fields: tuple[str | None, str | None, str | None] | None = None
    for line, row in read_rows(path):
        if fields is None:
            columns = list(row)
            p = _pick_field(columns, prompt_field, PROMPT_FIELDS, path, "prompt")
            if p is None:
                raise UserError(f"{path}: no prompt field among {', '.join(columns)}; name it one of "
                                f"{', '.join(PROMPT_FIELDS)} (from Python: load_file(path, prompt_field=...))")
            r = _pick_field(columns, response_field, RESPONSE_FIELDS, path, "response")
            lab = None
            if fixed is None:
                lab = _pick_field(columns, label_field, ("label",), path, "label")
                if lab is None:
                    raise UserError(f"{path}: no label column; label every row with --data harmful:{path} or "
                                    f"benign:{path}, or add a 'label' column (harmful/benign, 1/0)")
            fields = (p, r, lab)
        p, r, lab = fields
        where = f"{path}:{line}"
        prompt = row.get(p)
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f"{where}: missing or empty prompt field {p!r}")
        response = row.get(r) if r else None
        if response is not None and not isinstance(response, str):
            raise UserError(f"{where}: response field {r!r} is not text")
        row_label = fixed if fixed is not None else normalize_label(row.get(lab), where)
        meta = {k: v for k, v in row.items() if k not in (p, r, lab)}
        meta["line"] = line
        records.append(Record(id=f"{path.stem}:{line}", prompt=prompt, label=row_label,
                              response=response or None, source=source, meta=meta))
    return records

