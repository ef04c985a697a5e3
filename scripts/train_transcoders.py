#!/usr/bin/env python
"""Train the small transcoder set for a model (default: the embedded default) around its best probe layer.

Same options as ``anydepth transcoders train`` (run with ``--help``); the defaults here are a CPU budget.
Larger budgets, e.g. on a GPU:
    python scripts/train_transcoders.py --device cuda --max-tokens 2000000 --steps 20000 --batch-tokens 4096 \
        --dataset alpaca_eval_outputs --layers 10 11 12 13
Outputs: <root>/<model>/layer_<L>/{cfg.json, sae_weights.safetensors, training.json} (sae-lens format).
"""

from __future__ import annotations

import sys

from interp.cli.main import main

CPU_DEFAULTS = ["--steps", "600", "--batch-tokens", "512", "--max-tokens", "20000"]


def build_argv(argv: list[str]) -> list[str]:
    """``transcoders train`` with CPU defaults for any option the caller did not give."""
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    extra = []
    for i in range(0, len(CPU_DEFAULTS), 2):
        if CPU_DEFAULTS[i] not in given:
            extra += CPU_DEFAULTS[i: i + 2]
    return ["transcoders", "train", *extra, *argv]


if __name__ == "__main__":
    sys.exit(main(build_argv(sys.argv[1:])))
