"""The corpus spec: one YAML or JSON file naming sources, kinds, labels, counts, openers and lengths.

Kinds of rows an entry asks for:

* ``own``: the model's own answer to each prompt (benign prompts only);
* ``prefill``: each opener in ``openers`` forced, then continued by the model (one row per prompt and opener);
* ``dataset``: the source's own, third-party response, tokenised in context (no generation);
* ``refusal``: the model's own answer to harmful prompts, kept only when the refusal judge says it declined,
  labelled benign (hard negatives); ``count`` is the number of prompts answered;
* ``insertion``: random insertion (:mod:`interp.corpus.insertion`): the model's own refusal to a harmful prompt, cut
  at a seeded word boundary, a short harmful span from the record (its response or target) inserted there, then
  continued by the model. Labelled per depth: benign before the span, harmful from its first character, so a
  refusal's surface form does not predict the label; ``count`` is the number of prompts answered. With
  ``spans: SOURCE`` the hosts are the model's own answers to the entry's *benign* prompts instead (every answer
  is a host), and each span comes from the harmful record of ``SOURCE`` that shares the host's pair id (its
  topic twin, e.g. ``jbb_jailbroken`` for ``jbb_benign``): twins share a content group, so the held-out split
  never puts a span and its host on two sides.

Every error is one line naming the entry and what to change; nothing reads data or writes files here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from interp import UserError
from interp.data.loaders import SUFFIXES
from interp.data.records import BENIGN, HARMFUL, LABELS
from interp.data.registry import dataset_names

KINDS = ("own", "prefill", "dataset", "refusal", "insertion")
SHIPPED = ("default", "demo", "styles", "scale", "causal", "positions")  # spec names resolved to interp/corpus/specs/<name>.yaml


@dataclass(frozen=True)
class Entry:
    """One source and the rows to make from it."""

    source: str  # a dataset name (`anydepth datasets list`) or a file, optionally label:path
    kind: str
    label: str  # label of the rows; own / prefill / dataset take the source's records with this label
    count: int | None = None  # records to take (seeded sample); None = every record the source holds
    openers: tuple[str, ...] = ()  # prefill only: one row per prompt and opener
    split: str | None = None  # the dataset's split filter (meta['split'])
    max_new_tokens: int | None = None  # overrides the spec's for this entry
    spans: str | None = None  # insertion only: hosts are benign prompts, spans come from their twins in this source

    @property
    def name(self) -> str:
        split = f"[{self.split}]" if self.split else ""
        return f"{self.source}{split}:{self.kind}"


@dataclass(frozen=True)
class CorpusSpec:
    """A whole corpus: its entries in output order and the generation settings they share."""

    name: str
    entries: tuple[Entry, ...]
    max_new_tokens: int = 512
    seed: int = 0  # record samples and sampled decoding
    sample: bool = False  # greedy by default
    temperature: float = 0.7
    top_p: float = 0.95
    system: str | None = None

    def tokens_for(self, entry: Entry) -> int:
        return self.max_new_tokens if entry.max_new_tokens is None else entry.max_new_tokens

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        # an unset ``spans`` is left out, so specs written before it keep their hash (and their corpus folders)
        data["entries"] = [{**{k: v for k, v in e.items() if not (k == "spans" and v is None)},
                            "openers": list(e["openers"])} for e in data["entries"]]
        return data

    def canonical_json(self) -> str:
        """The spec as sorted JSON: what is saved beside the corpus and what :meth:`sha256` hashes."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _check_keys(data: dict, cls: type, where: str, required: tuple[str, ...]) -> None:
    known = _fields(cls)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(known)}")
    missing = [k for k in required if k not in data]
    if missing:
        raise UserError(f"{where}: missing key {missing[0]!r} (required: {', '.join(required)})")


def _typed(value: Any, kind: type, key: str, where: str, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise UserError(f"{where}: {key} must be {'null or ' if optional else ''}a{'n' if kind is int else ''} "
                        f"{kind.__name__}, got {value!r}")
    return value


def _is_file_source(name: str) -> bool:
    label, _, rest = name.partition(":")
    path = rest if label in LABELS and rest else name
    return Path(path).suffix.lower() in SUFFIXES


def _entry(data: Any, where: str) -> Entry:
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping with source, kind, label, got {data!r}")
    _check_keys(data, Entry, where, ("source", "kind", "label"))
    source = _typed(data["source"], str, "source", where)
    if source not in dataset_names() and not _is_file_source(source):
        raise UserError(f"{where}: unknown source {source!r}; known: {', '.join(dataset_names())} "
                        f"(or a {'/'.join(SUFFIXES)} file, optionally harmful:PATH or benign:PATH)")
    kind = _typed(data["kind"], str, "kind", where)
    if kind not in KINDS:
        raise UserError(f"{where}: unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    label = _typed(data["label"], str, "label", where)
    if label not in LABELS:
        raise UserError(f"{where}: label must be {HARMFUL} or {BENIGN}, got {label!r}")
    if kind == "refusal" and label != BENIGN:
        raise UserError(f"{where}: refusal rows are hard negatives (own refusals to harmful prompts); "
                        f"give them label {BENIGN}")
    if kind == "insertion" and label != HARMFUL:
        raise UserError(f"{where}: insertion rows turn harmful at the inserted span (benign before it, per depth); "
                        f"give them label {HARMFUL}")
    if kind == "own" and label != BENIGN:
        raise UserError(f"{where}: own answers to harmful prompts are mostly refusals; use kind refusal "
                        f"(label {BENIGN}) for them, or kind prefill for harmful continuations")
    openers = data.get("openers", [])
    if isinstance(openers, str):
        openers = [openers]
    if not isinstance(openers, list) or not all(isinstance(o, str) for o in openers):
        raise UserError(f"{where}: openers must be a list of strings, got {openers!r}")
    if kind == "prefill" and not [o for o in openers if o.strip()]:
        raise UserError(f"{where}: a prefill entry needs openers, e.g. openers: [\"Sure, here is\"]")
    if kind == "prefill" and any(not o.strip() for o in openers):
        raise UserError(f"{where}: an opener is empty; every opener must be non-empty text")
    if kind != "prefill" and openers:
        raise UserError(f"{where}: openers only apply to kind prefill (this entry is kind {kind}); remove them")
    if len(set(openers)) != len(openers):
        raise UserError(f"{where}: opener {next(o for o in openers if openers.count(o) > 1)!r} is listed twice")
    count = _typed(data.get("count"), int, "count", where, optional=True)
    if count is not None and count < 1:
        raise UserError(f"{where}: count must be >= 1 (omit it to take every record), got {count}")
    tokens = _typed(data.get("max_new_tokens"), int, "max_new_tokens", where, optional=True)
    if tokens is not None and tokens < 0:
        raise UserError(f"{where}: max_new_tokens must be >= 0, got {tokens}")
    split = _typed(data.get("split"), str, "split", where, optional=True)
    return Entry(source=source, kind=kind, label=label, count=count, openers=tuple(openers), split=split,
                 max_new_tokens=tokens, spans=_spans(data, kind, where))


def _spans(data: dict, kind: str, where: str) -> str | None:
    """An insertion entry's twin source of spans (benign hosts), checked like a source."""
    spans = _typed(data.get("spans"), str, "spans", where, optional=True)
    if spans is None:
        return None
    if kind != "insertion":
        raise UserError(f"{where}: spans only apply to kind insertion (this entry is kind {kind}); remove it")
    if spans not in dataset_names() and not _is_file_source(spans):
        raise UserError(f"{where}: unknown spans source {spans!r}; known: {', '.join(dataset_names())} "
                        f"(or a {'/'.join(SUFFIXES)} file)")
    return spans


def spec_from_dict(data: Any, where: str = "corpus spec") -> CorpusSpec:
    """Check a parsed spec and build it; every problem is one :class:`UserError` line starting with ``where``."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping with name and entries, got {type(data).__name__}")
    _check_keys(data, CorpusSpec, where, ("name", "entries"))
    name = _typed(data["name"], str, "name", where)
    entries = data["entries"]
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{where}: entries must be a non-empty list of sources")
    parsed = tuple(_entry(e, f"{where}: entry {i + 1}") for i, e in enumerate(entries))
    seen: dict[tuple, int] = {}
    for i, e in enumerate(parsed):
        key = (e.source, e.split, e.kind, e.label)
        if key in seen:
            raise UserError(f"{where}: entry {i + 1} repeats entry {seen[key] + 1} ({e.name}); merge them "
                            "(list several openers in one prefill entry)")
        seen[key] = i
    _warn_one_sided_openers(parsed, where)
    tokens = _typed(data.get("max_new_tokens", 512), int, "max_new_tokens", where)
    if tokens < 0:
        raise UserError(f"{where}: max_new_tokens must be >= 0, got {tokens}")
    spec = CorpusSpec(name=name, entries=parsed, max_new_tokens=tokens,
                      seed=_typed(data.get("seed", 0), int, "seed", where),
                      sample=_typed(data.get("sample", False), bool, "sample", where),
                      temperature=_typed(data.get("temperature", 0.7), float, "temperature", where),
                      top_p=_typed(data.get("top_p", 0.95), float, "top_p", where),
                      system=_typed(data.get("system"), str, "system", where, optional=True))
    if spec.sample and not spec.temperature > 0:
        raise UserError(f"{where}: temperature must be > 0 when sampling, got {spec.temperature}")
    if not 0 < spec.top_p <= 1:
        raise UserError(f"{where}: top_p must be in (0, 1], got {spec.top_p}")
    return spec


def _warn_one_sided_openers(entries: tuple[Entry, ...], where: str) -> None:
    """A forced opener that only one class carries lets a probe read the opener instead of the content: warn."""
    import warnings

    by_label: dict[str, set[str]] = {}
    for e in entries:
        if e.kind == "prefill":
            by_label.setdefault(e.label, set()).update(e.openers)
    one_sided = {lab: sorted(o for o in ops if not any(o in other for k, other in by_label.items() if k != lab))
                 for lab, ops in by_label.items()}
    for lab, openers in one_sided.items():
        if openers:
            warnings.warn(f"{where}: opener(s) {', '.join(repr(o) for o in openers[:3])}"
                          f"{' and more' if len(openers) > 3 else ''} appear only on {lab} prefill rows: the probe "
                          "can learn the opener instead of the content; force the same openers on both classes",
                          stacklevel=3)


def spec_path(name_or_path: str) -> Path:
    """A shipped spec name (``default``, ``demo``) or a file path → the file."""
    if name_or_path in SHIPPED:
        return Path(str(resources.files("interp.corpus").joinpath("specs", f"{name_or_path}.yaml")))
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise UserError(f"no corpus spec at {path} (give a .yaml/.json file or one of {', '.join(SHIPPED)})")
    return path


def _unique_json_pairs(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise UserError(f"key {repeated[0]!r} is given twice in one object")
    return dict(pairs)


def _strict_yaml_loader():
    """A safe YAML loader that refuses a key repeated within one mapping (PyYAML keeps the last silently)."""
    import yaml

    class Strict(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice in one entry (lines {seen[key] + 1} and "
                    f"{key_node.start_mark.line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Strict


def load_spec(name_or_path: str) -> CorpusSpec:
    """Read and check a spec file (YAML or JSON by suffix; shipped names allowed). A key repeated within one
    entry is an error, not the last value silently."""
    import yaml

    path = spec_path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start} is 0x{err.object[err.start]:02x}); save the spec "
                        "as UTF-8") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text, object_pairs_hook=_unique_json_pairs)
        else:
            data = yaml.load(text, Loader=_strict_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: malformed JSON: {err.msg}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{line}: malformed YAML: {getattr(err, 'problem', None) or err}") from None
    return spec_from_dict(data, where=str(path))

