"""``anydepth patch``: activation patching at the re-injected span (layers × depths) and attention knockout."""

from __future__ import annotations

from dataclasses import dataclass, field

from interp.config import add_arguments, from_namespace


@dataclass
class PatchConfig:
    """What to patch."""

    where: str = field(default="span", metadata={"help": "patch the probe token or the whole span",
                                                  "choices": ("probe", "span")})
    site: str = field(default="resid_post", metadata={"help": "residual site", "choices": ("resid_pre", "resid_post")})
    knockout: bool = field(default=True, metadata={"help": "also run span -> response attention knockout"})


def register(subparsers) -> None:
    from interp.causal.experiment import CausalConfig
    from interp.model.loading import ModelConfig

    p = subparsers.add_parser("patch", help="activation patching at the Safety-Token span (layer x depth heatmap)")
    add_arguments(p, ModelConfig)
    add_arguments(p, CausalConfig)
    add_arguments(p, PatchConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    from interp.causal import plots
    from interp.causal.experiment import CausalConfig, setup, write_result
    from interp.causal.patching import knockout_effects, patching_sweep
    from interp.model.hooks import resid_post, resid_pre
    from interp.model.loading import ModelConfig

    model_cfg, cfg, pcfg = (from_namespace(ModelConfig, args), from_namespace(CausalConfig, args),
                            from_namespace(PatchConfig, args))
    ctx = setup(cfg, model_cfg, "patch")
    site = resid_pre if pcfg.site == "resid_pre" else resid_post
    probe_layers = [ctx.probe.best_layer] if ctx.probe else []
    probe_site = ctx.probe.site if ctx.probe else resid_post
    result = patching_sweep(ctx.model, ctx.examples, ctx.span, ctx.pad_id, ctx.openers, cfg.depths, ctx.layers,
                            pcfg.where, site, ctx.probe, probe_layers, probe_site)
    payload = {"provenance": ctx.provenance, "patching": result}
    plots.patch_heatmaps(result, ctx.out / "patch_heatmap.png")
    if probe_layers:
        plots.patch_heatmaps(result, ctx.out / "patch_heatmap_probe.png", f"d_probe_{probe_layers[0]}")
    if pcfg.knockout:
        payload["knockout"] = knockout_effects(ctx.model, ctx.examples, ctx.span, ctx.pad_id, ctx.openers,
                                               cfg.depths, ctx.probe, probe_layers, probe_site)
        plots.knockout_plot(payload["knockout"], ctx.out / "knockout.png")
    path = write_result(ctx.out, "patch", payload, model_cfg, cfg, pcfg)
    print(f"wrote {path} and plots in {ctx.out}")
    for direction in ("harmful<-benign", "benign<-harmful"):
        cells = [c for c in result["cells"] if c["direction"] == direction]
        if cells:
            best = min(cells, key=lambda c: c["d_refusal"]["mean"]) if direction.startswith("harmful") else \
                max(cells, key=lambda c: c["d_refusal"]["mean"])
            ci = best["d_refusal"]
            print(f"{direction}: strongest Δ refusal log-odds {ci['mean']:+.3f} [{ci['lo']:+.3f}, {ci['hi']:+.3f}] "
                  f"at layer {best['layer']}, depth {best['depth']} (n={best['n']})")
    return 0
