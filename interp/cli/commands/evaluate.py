"""``anydepth evaluate {deep-prefill,over-refusal,attacks,cost}``: the ADA guard evaluation harness."""

from __future__ import annotations

import json

from interp.config import add_arguments, from_namespace
from interp.evaluate.common import EvalConfig

MODES = {
    "deep-prefill": "refusal vs prefilled depth for base, ADA-RK and ADA-LP",
    "over-refusal": "how often each defence fires on benign prompts",
    "attacks": "JailbreakBench attack prompts: attack success with and without the guard",
    "cost": "per-check latency vs a decode step, slowdown per stride, leak window",
}


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="evaluate the ADA guard (JSON + plots with 95%% CIs)")
    modes = p.add_subparsers(dest="eval_mode", metavar="MODE", required=True)
    for name, text in MODES.items():
        m = modes.add_parser(name, help=text, description=text)
        add_arguments(m, EvalConfig)
        m.set_defaults(func=run)


def _summary(result: dict) -> dict:
    mode = result["mode"]
    if mode == "deep-prefill":
        return {det: {p["depth"]: p["rate"] for p in pts} for det, pts in result["curves"].items()}
    if mode == "over-refusal":
        return {g: {k: v["rate"] for k, v in r.items()} for g, r in result["rates"].items()}
    if mode == "attacks":
        return {g: {k: v["rate"] for k, v in r.items()} for g, r in result["attack_success"].items()}
    return {"latency": [{k: r[k] for k in ("context_len", "decode_ms", "check_vs_decode", "early_exit_vs_decode")}
                        for r in result["latency"]],
            "slowdown": [{k: r[k] for k in ("stride", "piggyback", "early_exit", "slowdown")} for r in result["slowdown"]]}


def run(args) -> int:
    cfg = from_namespace(EvalConfig, args)
    cfg.validate()
    if args.eval_mode == "deep-prefill":
        from interp.evaluate.deep_prefill import run_deep_prefill as fn
    elif args.eval_mode == "over-refusal":
        from interp.evaluate.over_refusal import run_over_refusal as fn
    elif args.eval_mode == "attacks":
        from interp.evaluate.attacks import run_attacks as fn
    else:
        from interp.evaluate.cost import run_cost as fn
    result = fn(cfg)
    print(json.dumps(_summary(result), indent=1))
    print(f"wrote {result['path']}")
    return 0
