"""The command line (``anydepth``): one module per subcommand in ``commands``, the demo pipeline and its
report, run naming. Each subcommand's options are the fields of a typed dataclass (:mod:`interp.config`).
"""
