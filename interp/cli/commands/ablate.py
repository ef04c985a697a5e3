"""``anydepth ablate``: direction ablation / steering and transcoder-feature ablation at the span only."""

from __future__ import annotations

from interp.config import add_arguments, from_namespace


def register(subparsers) -> None:
    from interp.causal.experiment import CausalConfig
    from interp.causal.studies import AblateConfig
    from interp.model.loading import ModelConfig

    p = subparsers.add_parser("ablate", help="direction / transcoder-feature ablation at the Safety-Token span "
                                             "with random controls")
    add_arguments(p, ModelConfig)
    add_arguments(p, CausalConfig)
    add_arguments(p, AblateConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    from interp.causal.experiment import CausalConfig
    from interp.causal.studies import AblateConfig, ablate
    from interp.model.loading import ModelConfig

    print(ablate(from_namespace(ModelConfig, args), from_namespace(CausalConfig, args),
                 from_namespace(AblateConfig, args)).summary())
    return 0
