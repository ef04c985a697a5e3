"""``anydepth judge``: a content judge on a study run's own deep prefills, checked first on answers of known content.

The work is :func:`interp.study.judged.judge_run`; this module only parses options and prints.
"""

from __future__ import annotations

import json

from interp.config import add_arguments, from_namespace


def register(subparsers) -> None:
    from interp.study.judged import JudgeConfig

    p = subparsers.add_parser("judge", help="split a study run's own deep prefills by a content judge's verdict and "
                                            "give the guard's TPR on each side (the judge checked on known content)")
    p.add_argument("run", metavar="RUN", help="a finished study run folder (anydepth demo --out)")
    add_arguments(p, JudgeConfig)
    p.add_argument("--json", action="store_true", help="print JSON, not text")
    p.set_defaults(func=run)


def run(args) -> int:
    from interp.study.judged import JudgeConfig, judge_run

    result = judge_run(args.run, from_namespace(JudgeConfig, args))
    print(json.dumps(result.to_json(), indent=1) if args.json else result.summary())
    return 0
