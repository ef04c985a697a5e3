"""Named datasets → :class:`Record` lists: ``load_dataset``, ``list_datasets``, ``verify_dataset``.

A name may also be a path to a CSV/JSONL/JSON/TXT file, optionally prefixed ``harmful:`` or ``benign:``
to label every row (otherwise a ``label`` column is required); see :func:`interp.data.loaders.load_file`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interp import UserError
from interp.data import catalog as C
from interp.data import sources as S
from interp.data.fetch import CACHE_ENV, DATA_ENV, FileSpec, cache_dir, mirror_dir, resolve, sha256_file
from interp.data.loaders import SUFFIXES, load_file, read_rows
from interp.data.records import BENIGN, HARMFUL, DatasetInfo, Record


@dataclass(frozen=True)
class _Dataset:
    info: DatasetInfo
    files: tuple[FileSpec, ...]
    build: Callable[[list[tuple[FileSpec, Path]]], list[Record]]
    one_record_per_row: bool = False  # rows not loaded are reported as dropped by verify_dataset


def _ds(name: str, description: str, labels: tuple[str, ...], has_response: bool, license: str, n_rows: int,
        files: tuple[FileSpec, ...], build: Callable, split_help: str = "", drops: bool = False) -> _Dataset:
    folder = files[0].folder if files else None
    info = DatasetInfo(name, description, labels, has_response, license, n_rows, folder, split_help)
    return _Dataset(info, files, build, drops)


_H, _B = (HARMFUL,), (BENIGN,)
_JBB_SPLIT = "method dir or method/target_model, e.g. PAIR, GCG/vicuna-13b-v1.5"
_SHADOW_SPLIT = "subset or subset/model: heldout, Malicious, PhysicalSafetyUnsafe, CoNa, Controversial"

_DATASETS: dict[str, _Dataset] = {d.info.name: d for d in (
    _ds("demo", "built-in demo set written for this project: short harmful requests + topic-matched benign "
        "twins (meta pair_id, target opener)", (HARMFUL, BENIGN), False, "MIT (this project)", 80, (), S.demo,
        "category, e.g. cyber"),
    _ds("advbench", "AdvBench harmful behaviors; response = the affirmative target prefix", _H, True, "MIT",
        520, (C.ADVBENCH_BEHAVIORS,), S.advbench),
    _ds("jbb_harmful", "JailbreakBench JBB-Behaviors harmful (meta pair_id matches jbb_benign)", _H, False,
        "MIT", 100, (C.JBB_HARMFUL,), S.jbb_behaviors(HARMFUL), "category, e.g. Malware/Hacking"),
    _ds("jbb_benign", "JailbreakBench JBB-Behaviors topic-matched benign twins", _B, False, "MIT", 100,
        (C.JBB_BENIGN,), S.jbb_behaviors(BENIGN), "category, e.g. Malware/Hacking"),
    _ds("xstest_safe", "XSTest v2 safe prompts that look unsafe (over-refusal)", _B, False, "CC-BY-4.0", 250,
        (C.XSTEST,), S.xstest(BENIGN), "type, e.g. homonyms"),
    _ds("xstest_unsafe", "XSTest v2 contrast unsafe prompts", _H, False, "CC-BY-4.0", 200,
        (C.XSTEST,), S.xstest(HARMFUL), "type, e.g. contrast_homonyms"),
    _ds("harmbench", "HarmBench standard text behaviors (test 159 + val 41)", _H, False, "MIT", 200,
        C.HARMBENCH, S.harmbench("standard"), "test or val"),
    _ds("harmbench_contextual", "HarmBench contextual behaviors, prompt = context + '---' + behavior", _H,
        False, "MIT (contexts: third-party excerpts)", 100, C.HARMBENCH, S.harmbench("contextual"),
        "test or val"),
    _ds("harmbench_copyright", "HarmBench copyright behaviors (judging needs HarmBench hashes)", _H, False,
        "MIT", 100, C.HARMBENCH, S.harmbench("copyright"), "test or val"),
    _ds("alpaca_eval", "AlpacaEval prompts with gpt4_1106_preview reference answers", _B, True,
        "CC-BY-NC-4.0 + OpenAI terms", 805, (C.ALPACA_GPT4,), S.alpaca_eval("alpaca_eval"),
        "source set: helpful_base, koala, oasst, selfinstruct, vicuna"),
    _ds("alpaca_eval_davinci", "AlpacaEval prompts with text_davinci_003 reference answers (2 are empty upstream)", _B, True,
        "CC-BY-NC-4.0 + OpenAI terms", 805, (C.ALPACA_DAVINCI,), S.alpaca_eval("alpaca_eval_davinci"),
        "source set: helpful_base, koala, oasst, selfinstruct, vicuna"),
    _ds("jbb_artifacts", "JailbreakBench attack artifacts: jailbreak prompt + target response "
        "(meta jailbroken, goal); 163 rows with no submitted prompt dropped", _H, True,
        "MIT + model terms", 1637, C.JBB_ARTIFACTS, S.jbb_artifacts, _JBB_SPLIT, drops=True),
    _ds("jbb_jailbroken", "JailbreakBench artifacts judged jailbroken: plain goal + jailbroken response "
        "(deep-prefill pairs)", _H, True, "MIT + model terms", 937, C.JBB_ARTIFACTS, S.jbb_jailbroken,
        _JBB_SPLIT),
    _ds("shadow_alignment", "Shadow-Alignment harmful Q + answers, wrapper stripped, refusal-like answers "
        "dropped (judge refusal or partial, or guard.refusal.SOFT_REFUSALS)", _H, True, "Apache-2.0 + model terms", 1134,
        C.SHADOW_ALIGNMENT, S.shadow_alignment(True), _SHADOW_SPLIT, drops=True),
    _ds("shadow_alignment_unfiltered", "Shadow-Alignment, all 1218 rows (meta refusal_like)", _H, True,
        "Apache-2.0 + model terms", 1218, C.SHADOW_ALIGNMENT, S.shadow_alignment(False), _SHADOW_SPLIT),
)}


def dataset_names() -> list[str]:
    return list(_DATASETS)


def _get(name: str) -> _Dataset:
    if name not in _DATASETS:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(_DATASETS)} "
                        f"(or a path to a {'/'.join(SUFFIXES)} file)")
    return _DATASETS[name]


def list_datasets() -> list[DatasetInfo]:
    return [d.info for d in _DATASETS.values()]


def _file_target(name: str) -> tuple[str | None, Path] | None:
    """``(label, path)`` when ``name`` means a file: ``harmful:PATH`` / ``benign:PATH``, anything that exists on
    disk, or a name with a data-file suffix; None for a dataset name."""
    label, _, rest = name.partition(":")
    label_value, path_text = (label, rest) if label in (HARMFUL, BENIGN) and rest else (None, name)
    path = Path(path_text).expanduser()
    if label_value is not None or path.exists() or path.suffix.lower() in SUFFIXES:
        return label_value, path
    return None


def _check_file(path: Path) -> None:
    """One line for a dataset path that cannot be a data file: missing, a folder, or another file type."""
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a data file ({', '.join(SUFFIXES)}) or a dataset name")
    if not path.exists():
        raise UserError(f"no such file: {path} (a dataset is a file path, label:path, or one of "
                        f"{', '.join(_DATASETS)})")
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(f"{path}: unsupported file type {path.suffix.lower()!r}; use one of {', '.join(SUFFIXES)} "
                        "(export a spreadsheet as CSV)")


def _matches(record: Record, split: str) -> bool:
    value = str(record.meta.get("split", "")).lower()
    return value == split or value.startswith(split + "/")


def _select(records: list[Record], name: str, split: str | None, limit: int | None, seed: int) -> list[Record]:
    if split is not None:
        wanted = split.lower()
        chosen = [r for r in records if _matches(r, wanted)]
        if not chosen:
            known = sorted({str(r.meta["split"]) for r in records if r.meta.get("split")})
            hint = f"known: {', '.join(known)}" if known else "this dataset has no splits"
            raise UserError(f"dataset {name!r} has no split {split!r}; {hint}")
        records = chosen
    if limit is not None:
        if limit < 0:
            raise UserError(f"limit must be >= 0, got {limit}")
        if limit < len(records):
            records = [records[i] for i in _stratified_sample([r.label for r in records], limit, seed)]
    return records


def _stratified_sample(labels: list[str], limit: int, seed: int) -> list[int]:
    """Seeded sample of ``limit`` indices, in original order, with each label's share kept (largest remainder),
    so a small ``limit`` of a balanced set stays balanced."""
    rng = random.Random(seed)
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    quotas = {k: limit * len(v) / len(labels) for k, v in groups.items()}
    counts = {k: int(q) for k, q in quotas.items()}
    for k in sorted(quotas, key=lambda k: quotas[k] - counts[k], reverse=True)[:limit - sum(counts.values())]:
        counts[k] += 1
    return sorted(i for k, idx in groups.items() for i in rng.sample(idx, counts[k]))


def load_dataset(name: str, *, split: str | None = None, limit: int | None = None, seed: int = 0
                 ) -> list[Record]:
    """Records of a named dataset (or file path), optionally one split and a seeded sample of ``limit``.

    ``split`` filters on ``meta["split"]`` case-insensitively (``"PAIR"`` matches ``"PAIR/<model>"``);
    ``limit`` draws a sample with ``random.Random(seed)`` and keeps the original order.
    """
    if name not in _DATASETS and (target := _file_target(name)) is not None:
        label, path = target
        _check_file(path)
        records = load_file(path, label=label)
    elif name not in _DATASETS and "/" in name:
        _check_file(Path(name).expanduser())
    else:
        ds = _get(name)
        records = ds.build([(spec, resolve(spec)) for spec in ds.files])
    return _select(records, name, split, limit, seed)


def count_rows(path: Path) -> int:
    return sum(1 for _ in read_rows(path))


def _local_path(spec: FileSpec) -> tuple[Path, str]:
    mirror = mirror_dir()
    if mirror is not None:
        return mirror / spec.folder / spec.path, f"${DATA_ENV}"
    return cache_dir() / spec.folder / spec.path, f"cache (${CACHE_ENV})"


def verify_dataset(name: str) -> dict[str, Any]:
    """Check a dataset's local files (mirror, else cache; never downloads): presence, sha256, row counts.

    Returns ``{"name", "ok", "files": [{file, path, where, present, sha256_ok, rows, expected_rows}],
    "rows_expected", "rows_loaded", "rows_dropped"}``; the dataset is loaded only if every file checks out.
    """
    ds = _get(name)
    files, ok = [], True
    for spec in ds.files:
        path, where = _local_path(spec)
        entry: dict[str, Any] = {"file": spec.key, "path": str(path), "where": where, "present": path.is_file(),
                                 "sha256_ok": False, "rows": None, "expected_rows": spec.rows}
        if entry["present"]:
            entry["sha256_ok"] = sha256_file(path) == spec.sha256
            if entry["sha256_ok"] and spec.rows is not None:
                entry["rows"] = count_rows(path)
        ok &= entry["sha256_ok"] and entry["rows"] == spec.rows
        files.append(entry)
    result: dict[str, Any] = {"name": name, "files": files, "rows_expected": ds.info.n_rows,
                              "rows_loaded": None, "rows_dropped": None}
    if ok:
        records = ds.build([(spec, Path(f["path"])) for spec, f in zip(ds.files, files)])
        result["rows_loaded"] = len(records)
        if ds.one_record_per_row:
            result["rows_dropped"] = sum(spec.rows or 0 for spec in ds.files) - len(records)
        ok = len(records) == ds.info.n_rows
    result["ok"] = bool(ok)
    return result
