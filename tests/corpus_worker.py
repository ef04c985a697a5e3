"""Subprocess for the corpus resume test: build a tiny corpus, optionally SIGKILL itself after N batches.

Usage: python corpus_worker.py SPEC OUT [KILL_AFTER_BATCHES]. The kill lands after the batch's rows are on
disk and before its progress line, the worst moment (the restart must not write those rows twice).
"""

from __future__ import annotations

import os
import signal
import sys

import torch

from interp.corpus import journal
from interp.corpus.build import write_corpus
from interp.corpus.spec import load_spec
from interp.testing import tiny_model


def judge(text: str) -> bool:
    """A stand-in refusal judge for a random model: deterministic, keeps the short answers."""
    return len(text) < 6


def build(spec_path: str, out: str, kill_after: int | None = None, batch_size: int = 2) -> dict:
    model, tok = tiny_model("qwen2", n_layers=2, d_model=64, seed=5)
    if kill_after is not None:
        append, calls = journal.append_lines, [0]

        def killing_append(path, lines):
            append(path, lines)
            if path.name == journal.ROWS:
                calls[0] += 1
                if calls[0] >= kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)

        journal.append_lines = killing_append
    return write_corpus(model, tok, load_spec(spec_path), out, model_provenance={"model_id": "tiny-qwen2"},
                        batch_size=batch_size, progress=False, judge=judge)


if __name__ == "__main__":
    torch.set_num_threads(1)
    result = build(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
    print(f"rows {result['rows']}")
