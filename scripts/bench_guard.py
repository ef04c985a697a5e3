#!/usr/bin/env python
"""Benchmark the ADA guard: check vs decode step, early exit, end-to-end slowdown at stride 25.

Usage: python scripts/bench_guard.py [--model tiny:llama | qwen2.5-coder-0.5b-instruct | ...] [--device cuda]
The last line is ``check_vs_decode=<x> early_exit_vs_decode=<y> slowdown_at_stride25=<z>`` (ratios at the
largest context; early exit at the middle layer; slowdown = guarded / unguarded time - 1 from medians, checks
never fire; separate checks, the default). Every path is warmed once and timed in rounds of alternating order; the slowdown is printed with its
per-round spread beside the slowdown predicted from the per-check cost (checks x check ms / unguarded ms).
On CPU float32 the guard computes few-row linears as W·xᵀ (:mod:`interp.model.fast_linear`, the default); the
script also prints the check ratios without it.
"""

from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny:llama", help="tiny[:arch] or a model spec for load_model")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--contexts", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--strides", type=int, nargs="+", default=[25])
    ap.add_argument("--repeats-e2e", type=int, default=5, help="timed generations per configuration (slowdown)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    ap.add_argument("--json", default=None, help="also write all measurements here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from interp.evaluate.common import load_guard_model, random_probes
    from interp.evaluate.cost import check_latency, slowdown
    from interp.guard.generator import GuardedGenerator
    from interp.guard.types import GuardConfig
    from interp.spans.derive import derive_safety_spans, format_prompt_ids

    gm = load_guard_model(args.model, device=args.device, dtype=args.dtype)
    spans = derive_safety_spans(gm.tokenizer)
    probes = random_probes(gm.model, spans)
    dev = next(gm.model.parameters()).device
    print(f"model={gm.model_id} device={dev} dtype={next(gm.model.parameters()).dtype} "
          f"layers={gm.model.config.num_hidden_layers} probe_layer={probes.best_layer} threads={torch.get_num_threads()}")
    gen = GuardedGenerator(gm.model, gm.tokenizer, spans, GuardConfig(mode="lp"), probes)
    latency = []
    for n in args.contexts:
        row = check_latency(gen, n, repeats=args.repeats)
        latency.append(row)
        print(f"context={n}: decode {row['decode_ms']:.2f} ms, check {row['check_ms']:.2f} ms "
              f"({row['check_vs_decode']:.2f}x), early exit {row['early_exit_ms']:.2f} ms "
              f"({row['early_exit_vs_decode']:.2f}x), rk span {row['rk_span_ms']:.2f} ms")
    fast = gen.fast_linear_installed
    gen.close()
    if fast:  # the same ratios with plain F.linear, for comparison (CPU float32 only)
        plain = GuardedGenerator(gm.model, gm.tokenizer, spans, GuardConfig(mode="lp", fast_linear=False), probes)
        row = check_latency(plain, args.contexts[-1], repeats=args.repeats)
        plain.close()
        row["fast_linear"] = False
        latency.append(row)
        print(f"context={row['context_len']} without fast_linear: decode {row['decode_ms']:.2f} ms, check "
              f"{row['check_ms']:.2f} ms ({row['check_vs_decode']:.2f}x), early exit {row['early_exit_ms']:.2f} ms "
              f"({row['early_exit_vs_decode']:.2f}x)")
    prompts = [format_prompt_ids(gm.tokenizer, "Write a short story about a lighthouse keeper.")]
    slow = slowdown(gm.model, gm.tokenizer, spans, probes, prompts, strides=args.strides, max_new_tokens=args.max_new_tokens,
                    repeats=args.repeats_e2e)
    for row in slow:
        lo, _, hi = row["slowdown_spread"]
        line = (f"stride={row['stride']} piggyback={row['piggyback']} early_exit={row['early_exit']}: {row['tokens']} "
                f"tokens, {row['checks']} checks, "
                f"unguarded {row['unguarded_s']:.3f} s, guarded {row['guarded_s']:.3f} s (medians of "
                f"{args.repeats_e2e}), slowdown {100 * row['slowdown']:.1f}% (per round {100 * lo:.1f}..{100 * hi:.1f}%)")
        if row["predicted_slowdown"] is not None:
            pred = row["predicted_slowdown"]
            agree = max(row["slowdown"], 1e-9) / max(pred, 1e-9)
            line += (f"; predicted {100 * pred:.1f}% = {row['checks']} x {row['check_ms']:.2f} ms check at context "
                     f"{row['mean_context']} / unguarded; measured/predicted {agree:.2f}"
                     + (" (disagree by more than 1.5x: noise, or a cost the check benchmark misses)"
                        if not 1 / 1.5 <= agree <= 1.5 else ""))
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": gm.model_id, "latency": latency, "slowdown": slow}, f, indent=2)
    last = [r for r in latency if r.get("fast_linear", True)][-1]
    plain = [r for r in slow if not r["piggyback"] and not r["early_exit"]]
    s25 = [r for r in plain if r["stride"] == 25] or plain
    print(f"check_vs_decode={last['check_vs_decode']:.3f} early_exit_vs_decode={last['early_exit_vs_decode']:.3f} "
          f"slowdown_at_stride25={s25[0]['slowdown']:.4f}")


if __name__ == "__main__":
    main()
