#!/usr/bin/env python
"""Benchmark decoding when another process takes a core mid-run, with and without the load follower.

    python scripts/bench_load.py                    # embedded model, 32 prompts, 128 new tokens, slot engine
    python scripts/bench_load.py --model tiny       # quick run on a tiny random model
    python scripts/bench_load.py --nice 19          # the competitor at nice 19 (a niced background job)

A run that starts on a quiet machine keeps torch's spinning OpenMP threads; when another process then keeps one
of the cores busy, the thread sharing that core stalls every parallel region. :class:`interp.threads.LoadFollower`
(on for spinning threads; ``ANYDEPTH_FOLLOW_LOAD=0`` switches it off) measures the other processes' load every 2 s and runs
torch on the CPUs they leave free. This script decodes one workload four ways, each started quiet: ``quiet``
(follower on) and ``quiet_fixed`` (off), which show what the follower costs on a quiet machine; ``busy_fixed`` (a
single-threaded busy loop starts ``--delay`` s in, follower off) and ``busy_follow`` (the same competitor, follower
on). ``--nice N`` runs the competitor at nice ``N``: the follower counts a niced process only by the share of a
core it takes from ours, so beside ``nice 19`` it should keep both threads. Run it alone. The kernels are warmed
once on four prompts, then every path is timed in ``--repeats`` rounds of alternating order. The last line is
``follow_vs_quiet=<x> fixed_vs_quiet=<y>``: each busy path's fastest round over the quiet path's fastest round
(1.0 would be no cost; one core for all but the first ``--delay`` s gives a little under 2).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading

import torch

from interp.bench import spread, time_paths

BUSY_LOOP = "while True: pass"


def competitor(delay: float, nice: int = 0) -> tuple[threading.Timer, list]:
    """A timer that starts a busy single-threaded process (at ``nice``) after ``delay`` seconds; the list holds it
    once started."""
    started: list = []
    cmd = (["nice", "-n", str(nice)] if nice else []) + [sys.executable, "-c", BUSY_LOOP]
    timer = threading.Timer(delay, lambda: started.append(subprocess.Popen(cmd)))
    timer.start()
    return timer, started


def main() -> None:
    from interp.data import load_demo_set
    from interp.generate.continuations import generation_model, resolve_gen_dtype, stop_token_ids
    from interp.generate.decode import decode
    from interp.model.catalogue import DEFAULT_MODEL
    from interp.spans.derive import derive_safety_spans, format_prompt_ids

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, help="model spec, or 'tiny'")
    ap.add_argument("--n", type=int, default=32, help="prompts (the built-in demo set)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32, help="rows in flight")
    ap.add_argument("--delay", type=float, default=3.0, help="seconds into a busy path when the competitor starts")
    ap.add_argument("--nice", type=int, default=0, help="niceness of the competitor (19: a niced background job)")
    ap.add_argument("--repeats", type=int, default=2, help="timed rounds per path, in alternating order")
    args = ap.parse_args()
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        sys.exit("run without OMP_WAIT_POLICY=PASSIVE: the case measured is a run that started with spinning threads")

    if args.model == "tiny":
        from interp.testing import tiny_model

        base, tok = tiny_model("qwen2", n_layers=4, d_model=256, n_heads=8, n_kv_heads=2, d_mlp=768)
        label = "tiny-qwen2"
    else:
        from interp.model.loading import load_model

        loaded = load_model(args.model)
        base, tok, label = loaded.model, loaded.tokenizer, loaded.model_id
    dtype = resolve_gen_dtype("auto", "cpu")
    model = generation_model(base, dtype)
    prompts = [list(format_prompt_ids(tok, r.prompt)) for r in load_demo_set()[: args.n]]
    stops = stop_token_ids(base, tok, derive_safety_spans(tok))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def run(follow: bool, busy: bool, rows=prompts) -> None:
        os.environ["ANYDEPTH_FOLLOW_LOAD"] = "1" if follow else "0"
        timer, started = competitor(args.delay, args.nice) if busy else (None, [])
        try:
            with torch.no_grad():
                decode(model, rows, [args.max_new_tokens] * len(rows), stops=stops, pad_id=pad,
                       batch_size=args.batch, engine="slots")
        finally:
            if timer is not None:
                timer.cancel()
            for p in started:
                p.kill()
                p.wait()

    paths = {"quiet": lambda: run(True, False), "quiet_fixed": lambda: run(False, False),
             "busy_fixed": lambda: run(False, True), "busy_follow": lambda: run(True, True)}
    print(f"model {label}, {dtype}, {len(prompts)} prompts, {args.max_new_tokens} new tokens, {args.batch} rows, "
          f"{torch.get_num_threads()} threads, competitor after {args.delay} s at nice {args.nice}", flush=True)
    run(True, False, prompts[:4])  # warm the kernels once for all paths (a full untimed round each would triple it)
    times = time_paths(paths, repeats=args.repeats, warmup=False)
    best = {name: min(ts) for name, ts in times.items()}
    for name, ts in times.items():
        print(f"{name:12s} {spread(ts)}  ({best[name] / best['quiet']:.2f}x quiet)")
    print(f"follow_vs_quiet={best['busy_follow'] / best['quiet']:.2f} "
          f"fixed_vs_quiet={best['busy_fixed'] / best['quiet']:.2f}")


if __name__ == "__main__":
    main()
