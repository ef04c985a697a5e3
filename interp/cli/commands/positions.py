"""``anydepth positions``: compare read positions (is the Safety Token special?) on one store.

The work is :func:`interp.probes.positions.compare_positions`; this module only parses options and prints.
"""

from __future__ import annotations

from interp.config import add_arguments, from_namespace


def register(subparsers) -> None:
    from interp.probes.oof import ProbeConfig
    from interp.probes.positions import PositionsConfig

    p = subparsers.add_parser("positions", help="is the Safety Token special? probes at every read position (header "
                                                "tokens, injected controls, prompt and response tokens) on one store")
    add_arguments(p, PositionsConfig)
    add_arguments(p, ProbeConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    from interp.probes.oof import ProbeConfig
    from interp.probes.positions import PositionsConfig
    from interp.probes.run import positions, require_out

    cfg = from_namespace(PositionsConfig, args)
    out = require_out(cfg.out)
    print(positions(cfg.store, cfg, from_namespace(ProbeConfig, args)).summary())
    print(f"wrote {out}")
    return 0
