"""YAML span overrides for chat templates the derivation in :mod:`interp.spans.derive` cannot handle.

``interp/spans/span_overrides.yaml`` ships with the package; a user file (``derive_safety_spans(tok, overrides=path)``)
is searched first. Keys are a template hash (``sha256:<hex>``) or a substring of the tokenizer's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from interp import UserError
from interp.spans.render import one_line, tokenizer_name

__all__ = ["PACKAGED_OVERRIDES", "load_overrides"]

PACKAGED_OVERRIDES = "span_overrides.yaml"  # inside the ``interp.spans`` package

_OVERRIDE_FIELDS = {"end_of_turn", "header", "probe_position", "fallback", "note"}


def load_overrides(path: str | Path | None = None) -> dict[str, dict]:
    """Read and check an override YAML file (the packaged one when ``path`` is None)."""
    import yaml

    if path is None:
        src = resources.files("interp.spans").joinpath(PACKAGED_OVERRIDES)
        where, text = f"interp/{PACKAGED_OVERRIDES}", src.read_text(encoding="utf-8")
    else:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"span override file {str(p)!r} not found")
        where, text = str(p), p.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UserError(f"span override file {where}: invalid YAML: {one_line(err)}") from err
    return check_overrides(data or {}, where)


def check_overrides(data: Any, where: str) -> dict[str, dict]:
    if not isinstance(data, Mapping):
        raise UserError(f"span override file {where}: expected a mapping of keys to entries")
    out: dict[str, dict] = {}
    for key, entry in data.items():
        if not isinstance(entry, Mapping):
            raise UserError(f"span override file {where}: entry {key!r} is not a mapping")
        unknown = set(entry) - _OVERRIDE_FIELDS
        if unknown:
            raise UserError(f"span override file {where}: entry {key!r} has unknown field(s) "
                            f"{', '.join(sorted(map(str, unknown)))}; allowed: {', '.join(sorted(_OVERRIDE_FIELDS))}")
        for f in ("end_of_turn", "header"):
            if f in entry and not isinstance(entry[f], str):
                raise UserError(f"span override file {where}: {key!r}.{f} must be a string")
        if "probe_position" in entry:
            pp = entry["probe_position"]
            if isinstance(pp, bool) or not isinstance(pp, (int, str)):
                raise UserError(f"span override file {where}: {key!r}.probe_position must be 'role', 'last' "
                                "or an integer")
        out[str(key)] = dict(entry)
    return out


def match_override(tokenizer, thash: str, tables: list[dict[str, dict]]) -> list[tuple[str, dict]]:
    """Matching entries, best first: earlier tables first; in a table hash keys, then longer name keys."""
    name = tokenizer_name(tokenizer).lower()
    found: list[tuple[str, dict]] = []
    for table in tables:
        by_hash, by_name = [], []
        for key, entry in table.items():
            k = key.strip().lower()
            if k.removeprefix("sha256:") == thash:
                by_hash.append((key, entry))
            elif not k.startswith("sha256:") and k and k in name:
                by_name.append((key, entry))
        by_name.sort(key=lambda kv: -len(kv[0]))
        found.extend(by_hash + by_name)
    return found
