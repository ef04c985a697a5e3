#!/usr/bin/env python
"""Load a model twice in fresh subprocesses and compare: the second (cached) load must take < 10% of the first.

    python scripts/check_load_time.py                      # embedded default, empty temporary cache
    python scripts/check_load_time.py --model smollm2
    python scripts/check_load_time.py --cache ~/.cache/anydepth   # reuse an existing cache (first load may be warm)

Each load runs ``load_model`` in a new Python process and reports the time spent inside it (imports excluded)
and the wall time of the whole process. Exit status 1 if the ratio is not below ``--max-ratio``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

_CHILD = """
import json, sys, time
start = time.perf_counter()
from interp.model.loading import load_model
imported = time.perf_counter()
lm = load_model(sys.argv[1], device="cpu")
done = time.perf_counter()
print("RESULT " + json.dumps({"load_s": done - imported, "import_s": imported - start,
                              "sha256": lm.weights_sha256, "n_layers": lm.n_layers, "d_model": lm.d_model}))
"""


def _load_once(model: str, cache: str) -> dict:
    env = dict(os.environ, ANYDEPTH_CACHE=cache)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, model], env=env, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"loading {model} failed (exit {proc.returncode})")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return {**json.loads(line.removeprefix("RESULT ")), "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="model spec (default: the default)")
    parser.add_argument("--cache", default=None, help="existing cache folder (default: a new empty temporary one)")
    parser.add_argument("--max-ratio", type=float, default=0.10, help="required second/first ratio (default 0.10)")
    args = parser.parse_args(argv)

    cache = args.cache or tempfile.mkdtemp(prefix="anydepth-loadcheck-")
    try:
        first = _load_once(args.model, cache)
        second = _load_once(args.model, cache)
    finally:
        if args.cache is None:
            shutil.rmtree(cache, ignore_errors=True)
    ratio = second["load_s"] / first["load_s"]
    print(f"model {args.model}: {first['n_layers']} layers, d_model {first['d_model']}, sha256 {first['sha256']}")
    print(f"first load : {first['load_s']:7.2f} s (process wall {first['wall_s']:.2f} s)"
          f"{'' if args.cache else ' — empty cache: assemble + verify + convert'}")
    print(f"second load: {second['load_s']:7.2f} s (process wall {second['wall_s']:.2f} s) — from the cache")
    ok = ratio < args.max_ratio
    print(f"ratio {ratio:.3f} ({'OK' if ok else 'FAIL'}: must be < {args.max_ratio})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
