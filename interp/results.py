"""The base of every stage's typed result: JSON out and back in, and a printable summary.

A stage function (``interp.extract``, ``interp.sweep``, ``interp.train``, the evaluations, the causal studies,
``interp.run_study``) returns a dataclass derived from :class:`Result`. Its fields are the numbers; rendering (the
CLI's lines, the report's Markdown, plots) reads them and never decides anything itself.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

R = TypeVar("R", bound="Result")


def _plain(value: Any) -> Any:
    """Dataclasses, paths, tuples and numpy scalars as plain JSON values (keys as strings)."""
    import numpy as np

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.repr}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN / inf
    return value


def _field_value(tp: Any, value: Any) -> Any:
    """A JSON value read back as the field's declared type (nested results, paths, tuples)."""
    if value is None:
        return None
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _field_value(args[0], value)
    if isinstance(tp, type) and issubclass(tp, Result):
        return tp.from_json(value)
    if tp is Path:
        return Path(value)
    if origin is tuple:
        return tuple(value)
    if origin is list and len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], Result):
        return [args[0].from_json(v) for v in value]
    if origin is dict and len(args) == 2 and isinstance(args[1], type) and issubclass(args[1], Result):
        return {k: args[1].from_json(v) for k, v in value.items()}
    return value


@dataclasses.dataclass
class Result:
    """JSON round trip for a dataclass of plain fields (and nested results); ``summary()`` for humans."""

    kind: ClassVar[str] = "result"

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types only (``json.dumps`` takes it as is); :meth:`from_json` reads it back."""
        return {"result": self.kind, **_plain(self)}

    @classmethod
    def from_json(cls: type[R], data: dict[str, Any]) -> R:
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        return cls(**{k: _field_value(hints.get(k, Any), v) for k, v in data.items() if k in names})

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_json` atomically to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls: type[R], path: str | Path) -> R:
        return cls.from_json(json.loads(Path(path).read_text()))

    def summary(self) -> str:
        """A few lines a person reads first (the CLI prints them)."""
        return repr(self)
