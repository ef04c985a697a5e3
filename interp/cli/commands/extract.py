"""``anydepth extract``: Safety-Token activations at every depth (one packed forward per response) into HDF5."""

from __future__ import annotations

from interp.config import add_arguments, from_namespace


def register(subparsers) -> None:
    from interp.extract.packed import ExtractConfig
    from interp.generate.continuations import GenerateConfig
    from interp.model.loading import ModelConfig

    p = subparsers.add_parser("extract", help="extract depth-indexed Safety-Token activations to an HDF5 store")
    add_arguments(p, ModelConfig)
    add_arguments(p, GenerateConfig, skip=("too_long",))  # --too-long comes from ExtractConfig, same rule
    add_arguments(p, ExtractConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    from interp.extract.packed import ExtractConfig
    from interp.extract.run import extract_activations
    from interp.generate.continuations import GenerateConfig
    from interp.model.loading import ModelConfig

    result = extract_activations(from_namespace(ModelConfig, args), from_namespace(ExtractConfig, args),
                     from_namespace(GenerateConfig, args))
    print(result.summary())
    return 0
