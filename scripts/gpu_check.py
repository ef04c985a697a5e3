#!/usr/bin/env python
"""The GPU check: device tests on cuda (bf16 and float32), then the GPU benchmarks, and one summary table.

    python scripts/gpu_check.py                  # on a machine with CUDA, from the repository root (~5-10 min)
    python scripts/gpu_check.py --out DIR        # also write DIR/gpu_check.md and DIR/gpu_check.json

Steps (each with its own time limit; a failing step is reported and the next one still runs):
1. ``pytest -m device`` with ``ANYDEPTH_TEST_DEVICE=cuda``: packed extraction vs plain re-encoding and ADA's
   scheme, the store vs a scratch forward, guard check vs scratch forward, piggyback vs separate checks, causal
   cached vs full, in bf16 (and float32) with eager and sdpa; with two or more GPUs also a model split across
   two devices (``device_map``) against one device.
2. ``scripts/bench_gpu.py``: extraction paths and guard check latency on a random Llama-3.1-8B-shaped model in
   bf16; with two or more GPUs again with ``--device-map auto``.
The last line is ``gpu_check tests=<passed>/<run> bench=<ok>/<run>``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_step(name: str, cmd: list[str], timeout: int, env: dict | None = None) -> dict:
    print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=timeout,
                              capture_output=True, text=True)
        out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        out, rc = out + f"\n(timed out after {timeout} s)", 124
    print(out[-6000:], flush=True)
    return {"name": name, "rc": rc, "seconds": round(time.perf_counter() - start, 1), "output": out}


def tests_summary(out: str) -> tuple[int, int, str]:
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", out)}
    passed = counts.get("passed", 0)
    failed = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    return passed, passed + failed, ", ".join(f"{v} {k}" for k, v in counts.items()) or "no summary"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="folder for gpu_check.md / gpu_check.json")
    ap.add_argument("--shape", default="llama3.1-8b", help="bench_gpu.py model shape")
    ap.add_argument("--test-timeout", type=int, default=240)
    ap.add_argument("--bench-timeout", type=int, default=300)
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible (torch.cuda.is_available() is False); run it on a GPU "
                         "machine, or run `make test` for the CPU suite")
    n_gpu = torch.cuda.device_count()
    import transformers

    env_line = (f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
                f"{n_gpu} x {torch.cuda.get_device_name(0)}")
    print(env_line, flush=True)
    steps = [run_step("device tests (cuda)", [sys.executable, "-m", "pytest", "-m", "device", "-q", "-ra",
                                              "-p", "no:cacheprovider", "tests"],
                      args.test_timeout, env={"ANYDEPTH_TEST_DEVICE": "cuda"})]
    bench = [("bench_gpu (one GPU)", [])] + ([("bench_gpu (--device-map auto)", ["--device-map", "auto"])]
                                            if n_gpu > 1 else [])
    for name, extra in bench:
        steps.append(run_step(name, [sys.executable, "scripts/bench_gpu.py", "--shape", args.shape, *extra],
                              args.bench_timeout))

    rows = []
    passed, ran, detail = tests_summary(steps[0]["output"])
    rows.append((steps[0]["name"], "ok" if steps[0]["rc"] == 0 else f"FAILED (rc {steps[0]['rc']})", detail,
                 steps[0]["seconds"]))
    bench_ok = 0
    for step in steps[1:]:
        last = [ln for ln in step["output"].splitlines() if ln.startswith("packed_vs_plain=")]
        ok = step["rc"] == 0 and bool(last)
        bench_ok += ok
        rows.append((step["name"], "ok" if ok else f"FAILED (rc {step['rc']})", last[-1] if last else "no result line",
                     step["seconds"]))
    table = ["| step | result | detail | seconds |", "|---|---|---|---:|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    text = "\n".join([f"GPU check on {env_line}", "", *table])
    print("\n" + text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.md").write_text(text + "\n")
        (out / "gpu_check.json").write_text(json.dumps({"env": env_line, "steps": steps}, indent=2))
    print(f"gpu_check tests={passed}/{ran} bench={bench_ok}/{len(steps) - 1}")
    if steps[0]["rc"] != 0 or bench_ok < len(steps) - 1:
        sys.exit(1)


if __name__ == "__main__":
    main()
