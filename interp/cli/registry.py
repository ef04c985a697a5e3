"""The subcommands and their parser, with only the command that runs imported.

Building every subcommand's parser imports every config class and, through them, torch and scikit-learn (about
2 s). :func:`build_parser` given the command line therefore registers the chosen command in full and the others
by name and one-line help only. The help is read from each module's ``register`` without importing it
(:func:`command_help`), so ``anydepth --help`` starts at once. Without a command line it registers every command
in full, as tests and scripts that parse several command lines expect.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

from interp import __version__
from interp.cli import commands

DESCRIPTION = "Safety-Token probing, the ADA guard and causal analysis for chat LLMs."


def command_names() -> list[str]:
    """The subcommand modules of :mod:`interp.cli.commands`, sorted (one command each, named like its module)."""
    return sorted(m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_"))


def load(name: str) -> ModuleType:
    return importlib.import_module(f"{commands.__name__}.{name}")


def command_help(name: str) -> str | None:
    """The ``help=`` text ``register`` gives ``subparsers.add_parser(name, ...)``, read from the module's source
    (``None`` when it is not a literal: the caller then imports the module)."""
    tree = ast.parse((Path(commands.__path__[0]) / f"{name}.py").read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_parser"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "subparsers"
                and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == name):
            given = next((k.value for k in node.keywords if k.arg == "help"), None)
            return given.value if isinstance(given, ast.Constant) and isinstance(given.value, str) else None
    return None


def chosen_command(argv: list[str] | None, names: list[str] | None = None) -> str | None:
    """The subcommand a command line runs: its first word that is not an option, if it names one of ``names``
    (default :func:`command_names`)."""
    first = next((a for a in argv or [] if not a.startswith("-")), None)
    return first if first in (command_names() if names is None else names) else None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``anydepth`` parser: every command in full without ``argv``; else the command ``argv`` runs in full
    and the others by name and help (see the module doc)."""
    parser = argparse.ArgumentParser(prog="anydepth", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"anydepth {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    names = command_names()
    full = None if argv is None else chosen_command(argv, names)
    for name in names:
        text = None if argv is None or name == full else command_help(name)
        if text is None:
            load(name).register(sub)
        else:
            sub.add_parser(name, help=text)
    return parser
