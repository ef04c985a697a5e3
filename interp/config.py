"""Typed dataclass configs that double as CLI options and are saved as JSON beside every result.

A config is a plain ``@dataclass``. :func:`add_arguments` turns its fields into ``--kebab-case``
options (help text from ``field(metadata={"help": ...})``), :func:`from_namespace` builds the
instance back, and :func:`save_config` / :func:`load_config` write and read it as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--option`` per field of dataclass ``cls`` (defaults from the dataclass)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init or f.metadata.get("cli") is False:
            continue
        tp, _ = _unwrap_optional(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_text = f"{f.metadata.get('help', '')} (default: {default!r})".replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        origin = typing.get_origin(tp)
        if tp is bool:
            kwargs.update(type=_parse_bool, metavar="{true,false}")
        elif origin in (list, tuple):
            inner = typing.get_args(tp)[0] if typing.get_args(tp) else str
            kwargs.update(nargs="+", type=inner)
        elif tp in (int, float, str):
            kwargs.update(type=tp)
        else:
            kwargs.update(type=str)
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(flag, *f.metadata.get("aliases", ()), **kwargs)


def from_namespace(cls: type[T], ns: argparse.Namespace, **overrides: Any) -> T:
    """Build ``cls`` from parsed arguments; fields not given keep the dataclass default."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    values = {k: v for k, v in vars(ns).items() if k in names}
    values.update(overrides)
    hints = typing.get_type_hints(cls)
    for k, v in list(values.items()):
        tp, _ = _unwrap_optional(hints[k])
        if typing.get_origin(tp) is tuple and isinstance(v, list):
            values[k] = tuple(v)
    return cls(**values)


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-ready dict of a dataclass config (tuples become lists, paths strings)."""

    def conv(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if dataclasses.is_dataclass(v):
            return to_dict(v)
        return v

    return {f.name: conv(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def config_hash(cfg: Any, length: int = 12) -> str:
    """Stable short hash of a config, for config-addressed output folders."""
    blob = json.dumps(to_dict(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write ``cfg`` as JSON (with its class name) next to a result."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"config_class": type(cfg).__name__, **to_dict(cfg)}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def load_config(cls: type[T], path: str | Path) -> T:
    """Read a config written by :func:`save_config`."""
    return from_dict(cls, json.loads(Path(path).read_text()))


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """A config from :func:`to_dict`'s output (lists back to tuples where the field is one)."""
    data = dict(data)
    data.pop("config_class", None)
    hints = typing.get_type_hints(cls)
    for k, v in list(data.items()):
        tp, _ = _unwrap_optional(hints.get(k, object))
        if typing.get_origin(tp) is tuple and isinstance(v, list):
            data[k] = tuple(v)
    return cls(**data)


def run_config(**configs: Any) -> dict[str, Any]:
    """JSON-ready record of several dataclass configs (saved beside results), each with its class name."""
    return {name: {"config_class": type(cfg).__name__, **to_dict(cfg)} for name, cfg in configs.items()}


def short_hash(payload: dict, length: int = 12) -> str:
    """Stable short hash of a JSON-ready payload (config-addressed file names)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:length]


def save_json(payload: dict, path: str | Path) -> Path:
    """Write ``payload`` as JSON atomically (sorted keys), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path
