"""``anydepth train``: fit one probe per layer on a store and save a ``ProbeSet`` (safetensors + JSON).

The work is :func:`interp.probes.run.train`; this module only parses options and prints.
"""

from __future__ import annotations

from interp.config import add_arguments, from_namespace


def register(subparsers) -> None:
    from interp.probes.oof import ProbeConfig
    from interp.probes.train import TrainConfig

    p = subparsers.add_parser("train", help="fit per-layer probes on a store and save a ProbeSet")
    add_arguments(p, TrainConfig)
    add_arguments(p, ProbeConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    from interp.probes.oof import ProbeConfig
    from interp.probes.run import require_out, train
    from interp.probes.train import TrainConfig

    cfg = from_namespace(TrainConfig, args)
    out = require_out(cfg.out)
    print(train(cfg.store, cfg, from_namespace(ProbeConfig, args)).summary())
    print(f"wrote {out}")
    return 0
