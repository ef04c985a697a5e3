"""``anydepth demo``: the whole study (corpus → extract → sweep → train → evaluate → report) in one command;
``--preset study`` runs the full recipe."""

from __future__ import annotations

from interp.config import add_arguments, from_namespace


def register(subparsers) -> None:
    from interp.cli.pipeline import DemoConfig

    p = subparsers.add_parser("demo", help="run the whole study on a model and dataset(s), with a report")
    add_arguments(p, DemoConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from interp.cli.pipeline import DemoConfig, prepare, run_demo
    from interp.config import save_config
    from interp.naming import run_slug

    cfg = prepare(from_namespace(DemoConfig, args))  # the preset filled in: the saved config is what ran
    save_config(cfg, Path(cfg.out) / run_slug(cfg.model) / "demo_config.json")
    run_demo(cfg)
    return 0
