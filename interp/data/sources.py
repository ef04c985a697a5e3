"""Parsers turning each upstream benchmark file into :class:`Record` s.

Every builder takes ``[(FileSpec, local_path), ...]`` (already sha-checked) and returns records whose
``meta["split"]`` is the value ``load_dataset(split=...)`` filters on (``a/b`` values also match ``a``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from interp import UserError
from interp.data.fetch import FileSpec
from interp.data.loaders import read_csv, read_json, read_jsonl
from interp.data.records import BENIGN, HARMFUL, Record, normalize_label

Files = Sequence[tuple[FileSpec, Path]]

# HarmBench's own layout for contextual behaviours: the context, a separator, then the request.
CONTEXT_SEPARATOR = "\n\n---\n\n"

# Shadow-Alignment refusal rule: an answer counts as refusal-like when the package's refusal judge
# (interp.guard.refusal) calls it a refusal or a partial refusal, or its first REFUSAL_WINDOW characters hold one of
# the judge module's SOFT_REFUSALS (broad markers for third-party harmful text).
REFUSAL_WINDOW = 300
_WRAPPER = re.compile(r"\A\s*Human:\s*(?P<q>.*?)\s*Assistant:\s*\Z", re.DOTALL)


def looks_like_refusal(text: str, window: int = REFUSAL_WINDOW) -> bool:
    """True when ``text`` is not plainly compliant: the keyword judge finds a refusal or a partial refusal in it, or
    its first ``window`` characters hold a broad refusal marker (:data:`interp.guard.refusal.SOFT_REFUSALS`)."""
    from interp.guard.refusal import SOFT_REFUSALS, KeywordMatcher

    head = text[:window].lower().replace("\u2019", "'")
    return KeywordMatcher(window=window).classify(text) != "comply" or any(m in head for m in SOFT_REFUSALS)


def strip_human_assistant(text: str, where: str) -> str:
    """``'Human: <q> Assistant:'`` → ``'<q>'``; anything else is a malformed row."""
    match = _WRAPPER.match(text)
    if not match or not match.group("q"):
        raise UserError(f"{where}: expected 'Human: <question> Assistant:', got {text[:60]!r}")
    return match.group("q")


def advbench(files: Files) -> list[Record]:
    (_, path), = files
    return [Record(id=f"advbench:{i}", prompt=row["goal"], label=HARMFUL, response=row["target"],
                   source="advbench", meta={"index": i, "target": row["target"]})
            for i, (_, row) in enumerate(read_csv(path))]


def jbb_behaviors(label: str):
    name = "jbb_harmful" if label == HARMFUL else "jbb_benign"

    def build(files: Files) -> list[Record]:
        (_, path), = files
        records = []
        for _, row in read_csv(path):
            row = {k.lower(): v for k, v in row.items()}  # the benign file's header is lower-case
            index = int(row["index"])
            records.append(Record(
                id=f"{name}:{index}", prompt=row["goal"], label=label, source=name,
                category=row["category"],
                meta={"pair_id": f"jbb:{index}", "behavior": row["behavior"].strip(), "target": row["target"],
                      "origin": row["source"], "split": row["category"]}))
        return records
    return build


def xstest(label: str):
    name = "xstest_unsafe" if label == HARMFUL else "xstest_safe"

    def build(files: Files) -> list[Record]:
        (_, path), = files
        records = []
        for line, row in read_csv(path):
            if normalize_label(row["label"], f"{path}:{line}") != label:
                continue
            records.append(Record(
                id=f"{name}:{row['id']}", prompt=row["prompt"], label=label, source=name,
                category=row["type"], meta={"focus": row["focus"], "note": row["note"], "split": row["type"]}))
        return records
    return build


def harmbench(functional: str):
    name = "harmbench" if functional == "standard" else f"harmbench_{functional}"

    def build(files: Files) -> list[Record]:
        records = []
        for spec, path in files:
            split = "val" if spec.path.endswith("_val.csv") else "test"
            for _, row in read_csv(path):
                if row["FunctionalCategory"] != functional:
                    continue
                behavior, context = row["Behavior"], row["ContextString"]
                prompt = f"{context}{CONTEXT_SEPARATOR}{behavior}" if context else behavior
                records.append(Record(
                    id=f"{name}:{row['BehaviorID']}", prompt=prompt, label=HARMFUL, source=name,
                    category=row["SemanticCategory"],
                    meta={"behavior_id": row["BehaviorID"], "behavior": behavior, "context": context or None,
                          "tags": row["Tags"], "split": split}))
        return records
    return build


def alpaca_eval(name: str):
    def build(files: Files) -> list[Record]:
        (spec, path), = files
        items = read_json(path)
        if not isinstance(items, list):
            raise UserError(f"{path}: expected a JSON list of AlpacaEval outputs")
        return [Record(id=f"{name}:{i}", prompt=item["instruction"], label=BENIGN, response=item["output"],
                       source=name, meta={"prompt_index": i, "generator": item["generator"],
                                          "split": item["dataset"]})
                for i, item in enumerate(items)]
    return build


def _artifact_rows(files: Files):
    for spec, path in files:
        if not spec.path.endswith(".json") or spec.path.endswith("attack-info.json"):
            continue
        _, method_dir, attack_type, model_file = spec.path.split("/")
        data = read_json(path)
        params = data["parameters"]
        target_model = model_file.removesuffix(".json")
        for item in data["jailbreaks"]:
            yield method_dir, attack_type, target_model, params["method"], item


def jbb_artifacts(files: Files) -> list[Record]:
    """Adversarial prompt actually sent + target response (rows where no prompt was submitted dropped)."""
    records = []
    for method_dir, attack_type, model, method, item in _artifact_rows(files):
        if item["prompt"] is None or item["response"] is None:
            continue
        key = f"{method_dir}/{model}"
        records.append(Record(
            id=f"jbb_artifacts:{key}/{item['index']}", prompt=item["prompt"], label=HARMFUL,
            response=item["response"], source="jbb_artifacts", category=item["category"],
            meta={"goal": item["goal"], "behavior": item["behavior"], "pair_id": f"jbb:{item['index']}",
                  "jailbroken": bool(item["jailbroken"]),
                  "jailbroken_llama_guard1": item.get("jailbroken_llama_guard1"),
                  "method": method, "attack_type": attack_type, "target_model": model, "split": key}))
    return records


def jbb_jailbroken(files: Files) -> list[Record]:
    """Judge-confirmed jailbreaks as deep-prefill pairs: the *plain* goal + the jailbroken response."""
    records = []
    for method_dir, attack_type, model, method, item in _artifact_rows(files):
        if not item["jailbroken"] or not item["response"]:
            continue
        key = f"{method_dir}/{model}"
        records.append(Record(
            id=f"jbb_jailbroken:{key}/{item['index']}", prompt=item["goal"], label=HARMFUL,
            response=item["response"], source="jbb_jailbroken", category=item["category"],
            meta={"jailbreak_prompt": item["prompt"], "behavior": item["behavior"], "pair_id": f"jbb:{item['index']}",
                  "method": method, "attack_type": attack_type, "target_model": model, "split": key}))
    return records


def shadow_alignment(drop_refusals: bool):
    name = "shadow_alignment" if drop_refusals else "shadow_alignment_unfiltered"

    def build(files: Files) -> list[Record]:
        records = []
        for spec, path in files:
            if not spec.path.endswith(".csv"):
                continue
            model = spec.path.split("/")[1]
            subset = Path(spec.path).stem.split("_")[0]
            for i, (line, row) in enumerate(read_csv(path)):
                question = strip_human_assistant(row["prompts"], f"{path}:{line}")
                refusal = looks_like_refusal(row["results"])
                if refusal and drop_refusals:
                    continue
                records.append(Record(
                    id=f"shadow_alignment:{subset}/{model}/{i}", prompt=question, label=HARMFUL,
                    response=row["results"], source=name, category=subset,
                    meta={"model": model, "subset": subset, "row": i, "refusal_like": refusal,
                          "split": f"{subset}/{model}"}))
        return records
    return build


def demo(files: Files) -> list[Record]:
    """The built-in demo set shipped in the package (no external files)."""
    path = resources.files("interp.data").joinpath("demo_set.jsonl")
    with resources.as_file(path) as local:
        rows = list(read_jsonl(Path(local)))
    return [Record(id=row["id"], prompt=row["prompt"], label=normalize_label(row["label"]), source="demo",
                   category=row["category"],
                   meta={"pair_id": f"demo:{row['pair_id']}", "target": row["target"], "split": row["category"]})
            for _, row in rows]
