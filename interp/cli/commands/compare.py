"""``anydepth compare``: finished study runs side by side, one column each (the held-out numbers of a lever table).

The work is :func:`interp.study.compare.compare_runs`; this module only parses options and prints.
"""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser("compare", help="finished study runs (anydepth demo --out) side by side: held-out "
                                              "AUROCs, per-answer rates, LOSO, live guard rates")
    p.add_argument("runs", nargs="+", metavar="RUN", help="study run folders, in column order")
    p.add_argument("--no-separation", action="store_true",
                   help="skip rescoring each run's test answers (the per-answer AUROC row; reads the store)")
    p.add_argument("--tails", type=int, default=0, metavar="K",
                   help="also list each run's K own calibration answers scoring highest (they set the threshold), "
                        "K own benign test answers scoring highest and K harmful test answers scoring lowest")
    p.add_argument("--json", action="store_true", help="print JSON, not a Markdown table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from interp.study.compare import compare_runs

    comparison = compare_runs(args.runs, separation=not args.no_separation, tails=args.tails)
    print(json.dumps(comparison.to_json(), indent=1) if args.json else comparison.markdown())
    return 0
