"""The record type every dataset loads into, plus dataset metadata and label normalisation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from interp import UserError

HARMFUL = "harmful"
BENIGN = "benign"
LABELS = (HARMFUL, BENIGN)

_LABEL_ALIASES = {
    "harmful": HARMFUL, "unsafe": HARMFUL, "1": HARMFUL, "true": HARMFUL, "yes": HARMFUL, "harm": HARMFUL,
    "benign": BENIGN, "safe": BENIGN, "0": BENIGN, "false": BENIGN, "no": BENIGN, "harmless": BENIGN,
}


@dataclass(frozen=True)
class Record:
    """One prompt (optionally with a response) and its harmful/benign label.

    ``id`` is stable across runs (``<dataset>:<key>``); ``meta`` holds JSON-serialisable extras such as
    ``pair_id`` (topic-matched twins, namespaced by the family of datasets that shares it: ``jbb:12``,
    ``demo:weapons-1``), the source file, judge flags or affirmative openers.
    """

    id: str
    prompt: str
    label: str
    response: str | None = None
    source: str = ""
    category: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise UserError(f"record {self.id!r}: label must be one of {LABELS}, got {self.label!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "prompt": self.prompt, "label": self.label, "response": self.response,
                "source": self.source, "category": self.category, "meta": dict(self.meta)}


@dataclass(frozen=True)
class DatasetInfo:
    """What ``anydepth datasets list`` shows about one named dataset."""

    name: str
    description: str
    labels: tuple[str, ...]
    has_response: bool
    license: str
    n_rows: int
    folder: str | None = None
    splits: tuple[str, ...] = ()
    split_help: str = ""


def normalize_label(value: Any, where: str = "") -> str:
    """Map harmful/unsafe/1/true and benign/safe/0/false (any case) to ``harmful`` / ``benign``."""
    key = str(value).strip().lower()
    if key in _LABEL_ALIASES:
        return _LABEL_ALIASES[key]
    prefix = f"{where}: " if where else ""
    raise UserError(f"{prefix}label {value!r} is not harmful/unsafe/1 or benign/safe/0")
