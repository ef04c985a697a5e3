"""The ``anydepth`` console script: the subcommands of :mod:`interp.cli.commands`, found by
:mod:`interp.cli.registry`."""

from __future__ import annotations

import os
import sys

from interp import UserError, threads
from interp.cli.registry import build_parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MPLBACKEND", "Agg")  # the CLI only writes figures to files
    chosen = threads.configure()  # before anything imports torch
    if chosen.get("OMP_WAIT_POLICY"):
        print("other processes keep a CPU busy: torch threads wait passively (set OMP_WAIT_POLICY to choose)",
              file=sys.stderr)
    elif chosen.get("GOMP_SPINCOUNT"):
        print("only niced processes keep a CPU busy: torch threads spin longer before they sleep "
              "(set GOMP_SPINCOUNT to choose)", file=sys.stderr)
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)  # the command that runs in full, the others by name and help
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"anydepth {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
