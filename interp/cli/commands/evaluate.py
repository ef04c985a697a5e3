"""``anydepth evaluate {deep-prefill,over-refusal,attacks,cost}``: the ADA guard evaluation harness."""

from __future__ import annotations

from interp.config import add_arguments, from_namespace
from interp.evaluate.common import EvalConfig
from interp.evaluate.run import MODES


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="evaluate the ADA guard (JSON + plots with 95%% CIs)")
    modes = p.add_subparsers(dest="eval_mode", metavar="MODE", required=True)
    for name, text in MODES.items():
        m = modes.add_parser(name, help=text, description=text)
        add_arguments(m, EvalConfig)
        m.set_defaults(func=run)


def run(args) -> int:
    from interp.evaluate.run import evaluate_guard

    print(evaluate_guard(args.eval_mode, from_namespace(EvalConfig, args)).summary())
    return 0
