"""A content judge's verdicts kept on disk: ``judgments.jsonl`` (one ``{key, log_odds}`` line per answer, keyed by
prompt and answer text) beside ``judge.json`` (the judge's config and model, the journal's identity).

Written by :func:`interp.study.judged.judge_run`; read back by training (``--judgments DIR
--drop-judged-harmless true``), which leaves out of every fit the model's own deep prefills the judge calls
harmless. A key names the text, so judgments made on one corpus apply to every store of that corpus and to no
other.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from interp import UserError
from interp.probes.answers import own_deep_prefills

__all__ = ["harmless_prefills", "judgment_key", "open_journal", "read_judge", "read_judgments"]


def judgment_key(prompt: str, answer: str) -> str:
    """The journal key of one (prompt, answer)."""
    return hashlib.sha256(f"{prompt}\0{answer}".encode()).hexdigest()[:20]


def _parse(text: str) -> dict[str, float]:
    done = {}
    for line in text.splitlines():
        try:
            rec = json.loads(line)
            done[rec["key"]] = float(rec["log_odds"])
        except (ValueError, KeyError, TypeError):
            continue  # not a judgment (a line cut by a crash)
    return done


def open_journal(out: Path, judge_info: dict) -> dict[str, float]:
    """Judgments already made in ``out`` by the same judge (a different one: error), with ``judge.json`` written.
    A last line cut by a crash is dropped, so appends start on a fresh line."""
    out.mkdir(parents=True, exist_ok=True)
    head = out / "judge.json"
    if head.exists() and json.loads(head.read_text()) != judge_info:
        raise UserError(f"{out} holds judgments by another judge; give another --out")
    head.write_text(json.dumps(judge_info, indent=1, sort_keys=True) + "\n")
    path = out / "judgments.jsonl"
    text = path.read_text() if path.exists() else ""
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return _parse(text)


def _judge_files(folder: str | Path) -> tuple[Path, Path]:
    """A judge folder's ``judgments.jsonl`` and ``judge.json``; a one-line error when it holds none."""
    folder = Path(folder)
    path, head = folder / "judgments.jsonl", folder / "judge.json"
    if not (path.exists() and head.exists()):
        raise UserError(f"{folder} holds no judgments (judgments.jsonl and judge.json); write them with "
                        "`anydepth judge RUN --every-prefill true --out DIR`")
    return path, head


def read_judgments(folder: str | Path) -> dict[str, float]:
    """A judge folder's judgments, log-odds by :func:`judgment_key` (read only)."""
    return _parse(_judge_files(folder)[0].read_text())


def read_judge(folder: str | Path) -> dict:
    """A judge folder's ``judge.json`` (the judge's config and model), without reading its judgments."""
    return json.loads(_judge_files(folder)[1].read_text())


def harmless_prefills(meta: dict, folder: str | Path, among: np.ndarray) -> np.ndarray:
    """Rows (``meta`` from :func:`interp.probes.data.examples_meta`) that are the model's own deep prefills on
    harmful prompts, among ``among``, which the judge in ``folder`` calls harmless (log-odds <= 0). Every such
    prefill must be judged: a missing one is a one-line error (the judgments belong to another corpus, or were
    made for the test prompts only)."""
    if "response" not in meta:
        raise UserError("the store keeps no answer text, so judgments cannot be matched to its rows; re-extract it "
                        "with this version")
    done = read_judgments(folder)
    rows = np.flatnonzero(np.asarray(among, bool) & own_deep_prefills(meta))
    odds = np.array([done.get(judgment_key(meta["prompts"][i], meta["response"][i]), np.nan) for i in rows])
    missing = int(np.isnan(odds).sum())
    if missing:
        raise UserError(f"{missing} of the {len(rows)} own deep prefills to train on have no judgment in {folder}; "
                        "judge every prefill of this corpus with `anydepth judge RUN --every-prefill true --out "
                        f"{folder}`")
    out = np.zeros(len(meta["y"]), bool)
    out[rows[odds <= 0]] = True
    return out
