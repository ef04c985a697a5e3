"""``anydepth patch``: activation patching at the re-injected span (layers × depths) and attention knockout."""

from __future__ import annotations

from interp.config import add_arguments, from_namespace


def register(subparsers) -> None:
    from interp.causal.experiment import CausalConfig
    from interp.causal.studies import PatchConfig
    from interp.model.loading import ModelConfig

    p = subparsers.add_parser("patch", help="activation patching at the Safety-Token span (layer x depth heatmap)")
    add_arguments(p, ModelConfig)
    add_arguments(p, CausalConfig)
    add_arguments(p, PatchConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    from interp.causal.experiment import CausalConfig
    from interp.causal.studies import PatchConfig, patch
    from interp.model.loading import ModelConfig

    print(patch(from_namespace(ModelConfig, args), from_namespace(CausalConfig, args),
                from_namespace(PatchConfig, args)).summary())
    return 0
