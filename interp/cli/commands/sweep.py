"""``anydepth sweep``: grouped-CV probes over layers and depths of a store, with baselines, plots and JSON."""

from __future__ import annotations

from interp.config import add_arguments, from_namespace


def register(subparsers) -> None:
    from interp.probes.oof import ProbeConfig
    from interp.probes.run import SweepConfig

    p = subparsers.add_parser("sweep", help="cross-validated probes over layers x depths, baselines, plots")
    add_arguments(p, SweepConfig)
    add_arguments(p, ProbeConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    from interp.probes.oof import ProbeConfig
    from interp.probes.run import SweepConfig, require_out, sweep

    cfg = from_namespace(SweepConfig, args)
    out = require_out(cfg.out)
    print(sweep(cfg.store, cfg, from_namespace(ProbeConfig, args)).summary())
    print(f"wrote {out}/sweep.json, plots and configs")
    return 0
