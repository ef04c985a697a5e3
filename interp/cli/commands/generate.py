"""``anydepth generate``: the model's own continuations (prefill attack / own answers) saved as JSONL with ids."""

from __future__ import annotations

from interp.config import add_arguments, from_namespace


def register(subparsers) -> None:
    from interp.generate.continuations import GenerateConfig
    from interp.model.loading import ModelConfig

    p = subparsers.add_parser("generate", help="generate continuations (prefill attack / own answers) as JSONL")
    add_arguments(p, ModelConfig)
    add_arguments(p, GenerateConfig)
    p.add_argument("--out", default=None,
                   help="JSONL path (default activations/continuations/<model>-<data>-<mode>-<hash>.jsonl)")
    p.set_defaults(func=run)


def run(args) -> int:
    from interp.generate.continuations import GenerateConfig
    from interp.generate.run import make_continuations
    from interp.model.loading import ModelConfig

    print(make_continuations(from_namespace(ModelConfig, args), from_namespace(GenerateConfig, args), out=args.out).summary())
    return 0
