"""``anydepth ablate``: direction ablation / steering and transcoder-feature ablation at the span only."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from interp import UserError
from interp.causal.inputs import split_by_prompt
from interp.config import add_arguments, from_namespace


@dataclass
class AblateConfig:
    """What to ablate."""

    kind: str = field(default="directions", metadata={"help": "directions (probe / diff-of-means) or features",
                                                      "choices": ("directions", "features")})
    mode: str = field(default="ablate", metadata={"help": "directions: project out (ablate) or add (steer)",
                                                  "choices": ("ablate", "steer")})
    alphas: tuple[float, ...] = field(default=(-1.0, -0.5, 0.5, 1.0), metadata={
        "help": "steering strengths in units of the mean residual norm at the span"})
    direction_layer: int | None = field(default=None, metadata={
        "help": "layer of the diff-of-means / probe direction (default: probe best layer, else middle)"})
    n_random: int = field(default=20, metadata={"help": "random directions / feature sets per control"})
    where: str = field(default="span", metadata={"help": "positions edited", "choices": ("probe", "span")})
    transcoder: str | None = field(default=None, metadata={"help": "features: transcoder folder (sae-lens format)"})
    ks: tuple[int, ...] = field(default=(0, 1, 2, 5, 10, 20), metadata={"help": "features: top-k sizes"})
    feature_ablation: str = field(default="zero", metadata={"help": "features: zero or mean",
                                                            "choices": ("zero", "mean")})
    top: int = field(default=50, metadata={"help": "features: ranked features reported with CIs"})
    select_fraction: float = field(default=0.5, metadata={
        "help": "share of each label's prompts that rank the features / give the diff-of-means direction; effects "
                "are measured on the other prompts (0: both on every example, in-sample)"})


def register(subparsers) -> None:
    from interp.causal.experiment import CausalConfig
    from interp.model.loading import ModelConfig

    p = subparsers.add_parser("ablate", help="direction / transcoder-feature ablation at the Safety-Token span "
                                             "with random controls")
    add_arguments(p, ModelConfig)
    add_arguments(p, CausalConfig)
    add_arguments(p, AblateConfig)
    p.set_defaults(func=run)


def _directions(ctx, cfg, acfg, select) -> tuple[dict, int]:
    from interp.causal.directions import diff_of_means

    layer = acfg.direction_layer
    if layer is None:
        layer = ctx.probe.best_layer if ctx.probe else len(ctx.layers) // 2
    dirs = {"diff_of_means": diff_of_means(ctx.model, select, ctx.span, ctx.pad_id, ctx.openers,
                                           cfg.depths, layer, _probe_site(ctx))}
    if ctx.probe:
        dirs["probe"] = ctx.probe.direction(layer)
    return dirs, layer


def _probe_site(ctx):
    from interp.model.hooks import resid_post

    return ctx.probe.site if ctx.probe else resid_post


def _run_directions(ctx, cfg, acfg) -> dict:
    from interp.causal import plots
    from interp.causal.directions import direction_effects

    select, measure = split_by_prompt(ctx.examples, acfg.select_fraction, cfg.seed)
    dirs, layer = _directions(ctx, cfg, acfg, select)
    res = direction_effects(ctx.model, measure, ctx.span, ctx.pad_id, ctx.openers, dirs, cfg.depths,
                            ctx.layers, acfg.mode, acfg.alphas, acfg.n_random, acfg.where, seed=cfg.seed)
    res["direction_layer"] = layer
    res["n_select"], res["n_measure"] = len(select), len(measure)
    plots.controls_plot(res["rows"], ctx.out / f"directions_{acfg.mode}.png", f"direction {acfg.mode}")
    for r in res["rows"]:
        ci = r["real"]
        print(f"{r['direction']:>14} {r['label']:>7} depth {r['depth']:>3} α={r['alpha']:+g}: Δ refusal "
              f"{ci['mean']:+.3f} [{ci['lo']:+.3f}, {ci['hi']:+.3f}]; random {r['random_q025']:+.3f}.."
              f"{r['random_q975']:+.3f}; p={r['p_vs_random']:.3f}")
    return res


def _run_features(ctx, cfg, acfg) -> dict:
    from interp.causal import plots
    from interp.causal.features import (
        decoder_cosines,
        direct_probe_attribution,
        rank_features,
        span_features,
        topk_ablation,
    )
    from interp.causal.transcoders import load_transcoder, transcoder_layer

    if not acfg.transcoder:
        raise UserError("--kind features needs --transcoder FOLDER (train one with `anydepth transcoders train`)")
    tc = load_transcoder(acfg.transcoder)
    layer = transcoder_layer(tc)
    select, measure = split_by_prompt(ctx.examples, acfg.select_fraction, cfg.seed)
    acts = span_features(ctx.model, tc, layer, select, ctx.span, ctx.pad_id, cfg.depths, acfg.where)
    ranked = rank_features(acts["harmful"], acts["benign"], top=acfg.top, seed=cfg.seed, groups=acts["groups"])
    res: dict = {"transcoder": acfg.transcoder, "layer": layer, "ranked": ranked, "n_select": len(select),
                 "n_measure": len(measure)}
    if ctx.probe:
        pl = ctx.probe.best_layer
        w = ctx.probe.direction(pl)
        cos = decoder_cosines(tc, w)
        for r in ranked:
            r["cos_probe"] = float(cos[r["feature"]])
        if layer <= pl:
            attr = {k: direct_probe_attribution(acts[k], tc, w).mean(0) for k in ("harmful", "benign")}
            for r in ranked:
                r["attribution_harmful_minus_benign"] = float(attr["harmful"][r["feature"]] -
                                                              attr["benign"][r["feature"]])
    all_acts = torch.cat([acts["harmful"], acts["benign"]])
    candidates = torch.nonzero((all_acts > 0).any(0)).flatten().tolist()
    order = [r["feature"] for r in ranked if r["d"] > 0]  # features firing more after harmful prefixes
    ks = tuple(k for k in acfg.ks if k <= len(order))
    probe_layers = [ctx.probe.best_layer] if ctx.probe else []
    res["ablation"] = topk_ablation(ctx.model, tc, layer, measure, ctx.span, ctx.pad_id, ctx.openers,
                                    cfg.depths, order, ks, acfg.feature_ablation, all_acts.mean(0).float(),
                                    acfg.n_random, candidates or None, ctx.probe, probe_layers,
                                    _probe_site(ctx), acfg.where, cfg.seed)
    plots.topk_plot(res["ablation"], ctx.out / "features_topk.png")
    for r in res["ablation"]["rows"]:
        ci = r["d_refusal"]
        print(f"{r['label']:>7} depth {r['depth']:>3} k={r['k']:>3}: Δ refusal {ci['mean']:+.3f} "
              f"[{ci['lo']:+.3f}, {ci['hi']:+.3f}]; random k {r['d_refusal_random_mean']:+.3f}")
    return res


def run(args) -> int:
    from interp.causal.experiment import CausalConfig, setup, write_result
    from interp.model.loading import ModelConfig

    model_cfg, cfg, acfg = (from_namespace(ModelConfig, args), from_namespace(CausalConfig, args),
                            from_namespace(AblateConfig, args))
    ctx = setup(cfg, model_cfg, "ablate")
    res = _run_directions(ctx, cfg, acfg) if acfg.kind == "directions" else _run_features(ctx, cfg, acfg)
    name = f"{acfg.kind}_{acfg.mode}" if acfg.kind == "directions" else f"features_{acfg.feature_ablation}"
    path = write_result(ctx.out, name, {"provenance": ctx.provenance, acfg.kind: res}, model_cfg, cfg, acfg)
    print(f"wrote {path}")
    return 0
