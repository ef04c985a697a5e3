"""``anydepth demo``: the whole study (corpus → extract → sweep → train → evaluate → report) in one command;
``--preset study`` runs the full recipe. The work is :func:`interp.study.run_study`."""

from __future__ import annotations

from interp.config import add_arguments, from_namespace


def register(subparsers) -> None:
    from interp.study.config import StudyConfig

    p = subparsers.add_parser("demo", help="run the whole study on a model and dataset(s), with a report")
    add_arguments(p, StudyConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    from interp.study import StudyConfig, run_study

    result = run_study(from_namespace(StudyConfig, args), log=lambda line: print(line, flush=True))
    print(result.summary())
    print(f"report: {result.root / 'report.md'}")
    return 0
