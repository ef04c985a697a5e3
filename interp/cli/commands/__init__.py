"""CLI subcommands. Each module here defines ``register(subparsers)``; :mod:`interp.cli.main` finds them.

A module registers its subcommand only once it works: no stubs.
"""
