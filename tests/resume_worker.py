"""Subprocess for the resume test: extract a tiny model's store, optionally SIGKILL itself after N batches.

Usage: python resume_worker.py OUT.h5 [KILL_AFTER_BATCHES]
"""

from __future__ import annotations

import os
import signal
import sys

import torch

from interp.extract.packed import extract_to_store
from interp.generate.continuations import Continuation
from interp.spans.derive import derive_safety_spans, format_prompt_ids
from interp.testing import tiny_model


def run(out: str, kill_after: int | None = None) -> int:
    """Extract the fixed tiny store into ``out``; returns the number of rows computed."""
    model, tok = tiny_model("qwen2", n_layers=2, d_model=64, seed=9)
    spans = derive_safety_spans(tok)
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(10):
        prompt = f"prompt {i}"
        n = int(torch.randint(0, 40, (1,), generator=g))
        items.append(Continuation(id=f"r{i}", prompt=prompt, label="harmful" if i % 2 else "benign",
                                  prompt_ids=format_prompt_ids(tok, prompt),
                                  response_ids=torch.randint(0, 380, (n,), generator=g).tolist()))

    def on_batch(n_rows: int) -> None:
        if kill_after is not None and n_rows >= 2 * kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    res = extract_to_store(model, tok, items, out, spans=spans, depths=[0, 5, 20, 35], layers=[0, 1],
                           hooks=("resid_pre", "resid_post"), storage_dtype="bfloat16", batch_size=2,
                           progress=False, on_batch=on_batch)
    return res.n_computed


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(f"computed {run(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)}")
