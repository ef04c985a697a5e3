"""File and folder names derived from model and dataset names (one place for the slug rules)."""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["check_out", "file_slug", "run_slug", "slug"]

_ASCII_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9._-]+")


def slug(text: str, *, unicode: bool = False) -> str:
    """A file-name-safe form of a model or dataset name (a path gives its last component); may be empty.

    Kept: ASCII letters, digits and ``._-``; each run of other characters becomes one ``-``; leading and
    trailing ``-`` are stripped. ``unicode=True`` is the rule the demo's run folders were named by, kept so
    existing runs still resume: any Unicode letter or digit is kept, each other character becomes its own
    ``-``, and a name starting with ``.`` is read as a path too.
    """
    if unicode:
        name = Path(text).name if os.sep in text or text.startswith(".") else text
        return "".join(c if c.isalnum() or c in "._-" else "-" for c in name).strip("-")
    name = Path(text).name if "/" in text else text
    return _ASCII_UNSAFE_RUN.sub("-", name).strip("-")


def file_slug(text: str) -> str:
    """Output file name part for a model or dataset name (``anydepth generate`` / ``extract``)."""
    return slug(text) or "data"


def run_slug(text: str) -> str:
    """The demo's run folder name part (lower case, at most 60 characters) for a model name."""
    return slug(text, unicode=True).lower()[:60]


def check_out(path: str | Path, kind: str) -> Path:
    """``path`` when an ``--out`` of ``kind`` (``"file"`` or ``"dir"``) can be written there, else a one-line
    :class:`~interp.UserError`, raised before any work starts (an existing folder where a file goes, a file where a
    folder goes, or a parent that is a file)."""
    from interp import UserError

    p = Path(path)
    if kind == "file" and p.is_dir():
        raise UserError(f"--out {p} is a folder; give a file path (e.g. {p / 'out.jsonl'})")
    if kind == "dir" and p.exists() and not p.is_dir():
        raise UserError(f"--out {p} is a file; give a folder (a new or an existing one)")
    parent = next((q for q in p.parents if q.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"--out {p}: {parent} is a file, not a folder")
    return p
