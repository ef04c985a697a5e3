"""The ``anydepth`` console script: discovers subcommands in :mod:`interp.cli.commands`."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from interp import UserError, __version__, threads
from interp.cli import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anydepth",
        description="Safety-Token probing, the ADA guard and causal analysis for chat LLMs.",
    )
    parser.add_argument("--version", action="version", version=f"anydepth {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MPLBACKEND", "Agg")  # the CLI only writes figures to files
    chosen = threads.configure()  # before anything imports torch
    if chosen.get("OMP_WAIT_POLICY"):
        print("other processes keep a CPU busy: torch threads wait passively (set OMP_WAIT_POLICY to choose)",
              file=sys.stderr)
    elif chosen.get("GOMP_SPINCOUNT"):
        print("only niced processes keep a CPU busy: torch threads spin longer before they sleep "
              "(set GOMP_SPINCOUNT to choose)", file=sys.stderr)
    parser = build_parser()
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
