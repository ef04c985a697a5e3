"""``anydepth levers``: measure recipe levers one at a time against the base recipe on one store.

The work is :func:`interp.probes.levers.compare_levers`; this module only parses options and prints.
"""

from __future__ import annotations

from interp.config import add_arguments, from_namespace


def register(subparsers) -> None:
    from interp.probes.levers import LeverConfig
    from interp.probes.oof import ProbeConfig

    p = subparsers.add_parser("levers", help="measure recipe levers (readout, weights, layers, aggregation) "
                                             "against the base recipe on one store and split")
    add_arguments(p, LeverConfig)
    add_arguments(p, ProbeConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    from interp.probes.levers import LeverConfig
    from interp.probes.oof import ProbeConfig
    from interp.probes.run import levers, require_out

    cfg = from_namespace(LeverConfig, args)
    out = require_out(cfg.out)
    print(levers(cfg.store, cfg, from_namespace(ProbeConfig, args)).summary())
    print(f"wrote {out}")
    return 0
