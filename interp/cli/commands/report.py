"""``anydepth report``: rewrite finished study runs' reports and ``results.json`` by this version's rules.

The work is :func:`interp.study.pipeline.refresh_study`; this module only parses options and prints.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="rewrite finished study runs' report.md and results.json (targets "
                                             "recomputed from the stage folders; no stage runs)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="study run folders (anydepth demo --out)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from interp.study.pipeline import refresh_study

    for path in args.runs:
        result = refresh_study(path)
        print(f"{result.root / 'report.md'}\n{result.summary()}")
    return 0
