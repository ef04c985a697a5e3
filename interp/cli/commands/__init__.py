"""CLI subcommands. Each module here defines ``register(subparsers)``; :mod:`interp.cli.registry` finds them.
The command is named like its module, and ``register`` gives its one-line help as a literal ``help=`` to
``subparsers.add_parser`` (read without importing the module, for ``anydepth --help``).

A module registers its subcommand only once it works: no stubs.
"""
