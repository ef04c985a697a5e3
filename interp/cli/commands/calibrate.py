"""``anydepth calibrate``: recalibrate a probe set's threshold on more of the model's own benign answers.

The work is :func:`interp.probes.recalibrate.recalibrate`; this module only parses options and prints.
"""

from __future__ import annotations

from interp.config import add_arguments, from_namespace


def register(subparsers) -> None:
    from interp.probes.recalibrate import RecalibrateConfig

    p = subparsers.add_parser("calibrate", help="recalibrate a probe set's per-answer threshold on more own "
                                                "benign answers (stores of the same model) and measure it held out")
    add_arguments(p, RecalibrateConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    from interp.probes.recalibrate import RecalibrateConfig, recalibrate
    from interp.probes.run import require_out

    cfg = from_namespace(RecalibrateConfig, args)
    out = require_out(cfg.out)
    print(recalibrate(cfg=cfg).summary())
    print(f"wrote {out}")
    return 0
