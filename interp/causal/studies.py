"""The causal stages, typed in and out: :func:`patch` (activation patching at the re-injected span, layers × depths,
and attention knockout), :func:`ablate_directions` (probe / diff-of-means directions ablated or steered, against
random directions) and :func:`feature_study` (transcoder features ranked on some prompts, top-k ablated on the
others). Each writes ``<out>/<study>/<name>.json`` with its configs and figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from interp import UserError
from interp.causal import plots
from interp.causal.directions import diff_of_means, direction_effects
from interp.causal.experiment import CausalConfig, Context, setup, write_result
from interp.causal.features import (
    decoder_cosines,
    direct_probe_attribution,
    rank_features,
    span_features,
    topk_ablation,
)
from interp.causal.inputs import split_by_prompt
from interp.causal.patching import knockout_effects, patching_sweep
from interp.causal.transcoders import load_transcoder, transcoder_layer
from interp.model.hooks import resid_post, resid_pre
from interp.model.loading import LoadedModel, ModelConfig, model_config_of
from interp.results import Result
from interp.spans.controls import derive_controls

__all__ = ["AblateConfig", "CausalResult", "PatchConfig", "ablate", "ablate_directions", "feature_study", "patch"]


@dataclass
class PatchConfig:
    """What to patch."""

    where: str = field(default="span", metadata={
        "help": "patch the probe token, the whole span, one span token (its index), or a position before it "
                "(last_token, prompt, t_inst: the last response, prompt and instruction tokens; `anydepth positions` "
                "compares the same reads)", "aliases": ("--position",)})
    site: str = field(default="resid_post", metadata={"help": "residual site", "choices": ("resid_pre", "resid_post")})
    knockout: bool = field(default=True, metadata={"help": "also run span -> response attention knockout"})


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

    def validate(self) -> None:
        """The options checked before the model loads."""
        if not 0 <= self.select_fraction < 1:
            raise UserError(f"--select-fraction must lie in [0, 1), got {self.select_fraction}")


@dataclass
class CausalResult(Result):
    """One causal study's numbers (``data``: its JSON payload) and where they were written."""

    kind = "causal"
    study: str
    path: Path
    data: dict[str, Any]
    lines: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return "\n".join([*self.lines, f"wrote {self.path}"])


def _probe_site(ctx: Context):
    return ctx.probe.site if ctx.probe else resid_post


def patch(model: ModelConfig | LoadedModel | str, cfg: CausalConfig | None = None,
          pcfg: PatchConfig | None = None) -> CausalResult:
    """Patch span activations between harmful and benign runs at every (layer, depth), and knock out the span's
    attention to the response; heatmaps beside the JSON."""
    cfg, pcfg = cfg or CausalConfig(), pcfg or PatchConfig()
    ctx = setup(cfg, model, "patch")
    site = resid_pre if pcfg.site == "resid_pre" else resid_post
    probe_layers = [ctx.probe.best_layer] if ctx.probe else []
    common = dict(probe=ctx.probe, probe_layers=probe_layers, probe_site=_probe_site(ctx))
    suffix = len(derive_controls(ctx.tokenizer, ctx.span).prompt_suffix_ids) if pcfg.where == "t_inst" else None
    result = patching_sweep(ctx.model, ctx.examples, ctx.span, ctx.pad_id, ctx.openers, depths=cfg.depths,
                            layers=ctx.layers, where=pcfg.where, site=site, prompt_suffix_len=suffix, **common)
    payload = {"provenance": ctx.provenance, "patching": result}
    plots.patch_heatmaps(result, ctx.out / "patch_heatmap.png")
    if probe_layers:
        plots.patch_heatmaps(result, ctx.out / "patch_heatmap_probe.png", f"d_probe_{probe_layers[0]}")
    if pcfg.knockout:
        payload["knockout"] = knockout_effects(ctx.model, ctx.examples, ctx.span, ctx.pad_id, ctx.openers,
                                               depths=cfg.depths, **common)
        plots.knockout_plot(payload["knockout"], ctx.out / "knockout.png")
    path = write_result(ctx.out, "patch", payload, model_config_of(model), cfg, pcfg)
    return CausalResult("patch", path, payload, _strongest_patch(result))


def _strongest_patch(result: dict) -> list[str]:
    lines = []
    for direction in ("harmful<-benign", "benign<-harmful"):
        cells = [c for c in result["cells"] if c["direction"] == direction]
        if cells:
            pick = min if direction.startswith("harmful") else max
            best = pick(cells, key=lambda c: c["d_refusal"]["mean"])
            ci = best["d_refusal"]
            lines.append(f"{direction}: strongest Δ refusal log-odds {ci['mean']:+.3f} [{ci['lo']:+.3f}, "
                         f"{ci['hi']:+.3f}] at layer {best['layer']}, depth {best['depth']} (n={best['n']})")
    return lines


def ablate(model: ModelConfig | LoadedModel | str, cfg: CausalConfig | None = None,
           acfg: AblateConfig | None = None) -> CausalResult:
    """:func:`ablate_directions` or :func:`feature_study`, as ``acfg.kind`` says (``anydepth ablate``)."""
    acfg = acfg or AblateConfig()
    return (ablate_directions if acfg.kind == "directions" else feature_study)(model, cfg, acfg)


def ablate_directions(model: ModelConfig | LoadedModel | str, cfg: CausalConfig | None = None,
                      acfg: AblateConfig | None = None) -> CausalResult:
    """Ablate (or steer along) the diff-of-means direction, chosen on some prompts, and the probe's direction, at
    the span of the other prompts; ``n_random`` random directions as the control."""
    cfg, acfg = cfg or CausalConfig(), acfg or AblateConfig()
    acfg.validate()
    ctx = setup(cfg, model, "ablate")
    select, measure = split_by_prompt(ctx.examples, acfg.select_fraction, cfg.seed)
    layer = acfg.direction_layer
    if layer is None:
        layer = ctx.probe.best_layer if ctx.probe else len(ctx.layers) // 2
    dirs = {"diff_of_means": diff_of_means(ctx.model, select, ctx.span, ctx.pad_id, ctx.openers, depths=cfg.depths,
                                           layer=layer, site=_probe_site(ctx))}
    if ctx.probe:
        dirs["probe"] = ctx.probe.direction(layer)
    res = direction_effects(ctx.model, measure, ctx.span, ctx.pad_id, ctx.openers, directions=dirs, depths=cfg.depths,
                            layers=ctx.layers, mode=acfg.mode, alphas=acfg.alphas, n_random=acfg.n_random,
                            where=acfg.where, seed=cfg.seed)
    res.update(direction_layer=layer, n_select=len(select), n_measure=len(measure))
    plots.controls_plot(res["rows"], ctx.out / f"directions_{acfg.mode}.png", f"direction {acfg.mode}")
    lines = [f"{r['direction']:>14} {r['label']:>7} depth {r['depth']:>3} α={r['alpha']:+g}: Δ refusal "
             f"{r['real']['mean']:+.3f} [{r['real']['lo']:+.3f}, {r['real']['hi']:+.3f}]; random "
             f"{r['random_q025']:+.3f}..{r['random_q975']:+.3f}; p={r['p_vs_random']:.3f}" for r in res["rows"]]
    payload = {"provenance": ctx.provenance, "directions": res}
    path = write_result(ctx.out, f"directions_{acfg.mode}", payload, model_config_of(model), cfg, acfg)
    return CausalResult("directions", path, payload, lines)


def feature_study(model: ModelConfig | LoadedModel | str, cfg: CausalConfig | None = None,
                  acfg: AblateConfig | None = None) -> CausalResult:
    """Rank a transcoder's features by harmful-vs-benign activation at the span on the selection prompts (with
    their alignment to the probe), then ablate the top k at the span of the measurement prompts against random
    feature sets of the same size."""
    cfg, acfg = cfg or CausalConfig(), acfg or AblateConfig(kind="features")
    acfg.validate()
    if not acfg.transcoder:
        raise UserError("--kind features needs --transcoder FOLDER (train one with `anydepth transcoders train`)")
    ctx = setup(cfg, model, "ablate")
    tc = load_transcoder(acfg.transcoder)
    layer = transcoder_layer(tc)
    select, measure = split_by_prompt(ctx.examples, acfg.select_fraction, cfg.seed)
    acts = span_features(ctx.model, tc, layer, select, ctx.span, ctx.pad_id, depths=cfg.depths, where=acfg.where)
    ranked = rank_features(acts["harmful"], acts["benign"], top=acfg.top, seed=cfg.seed, groups=acts["groups"])
    if ctx.probe:
        _probe_alignment(ctx, tc, layer, acts, ranked)
    all_acts = torch.cat([acts["harmful"], acts["benign"]])
    candidates = torch.nonzero((all_acts > 0).any(0)).flatten().tolist()
    order = [r["feature"] for r in ranked if r["d"] > 0]  # features firing more after harmful prefixes
    ablation = topk_ablation(
        ctx.model, tc, layer, measure, ctx.span, ctx.pad_id, ctx.openers, depths=cfg.depths, ranked=order,
        ks=tuple(k for k in acfg.ks if k <= len(order)), mode=acfg.feature_ablation, means=all_acts.mean(0).float(),
        n_random=acfg.n_random, candidates=candidates or None, probe=ctx.probe,
        probe_layers=[ctx.probe.best_layer] if ctx.probe else [], probe_site=_probe_site(ctx), where=acfg.where,
        seed=cfg.seed)
    plots.topk_plot(ablation, ctx.out / "features_topk.png")
    res = {"transcoder": acfg.transcoder, "layer": layer, "ranked": ranked, "n_select": len(select),
           "n_measure": len(measure), "ablation": ablation}
    lines = [f"{r['label']:>7} depth {r['depth']:>3} k={r['k']:>3}: Δ refusal {r['d_refusal']['mean']:+.3f} "
             f"[{r['d_refusal']['lo']:+.3f}, {r['d_refusal']['hi']:+.3f}]; random k "
             f"{r['d_refusal_random_mean']:+.3f}" for r in ablation["rows"]]
    payload = {"provenance": ctx.provenance, "features": res}
    path = write_result(ctx.out, f"features_{acfg.feature_ablation}", payload, model_config_of(model), cfg, acfg)
    return CausalResult("features", path, payload, lines)


def _probe_alignment(ctx: Context, tc, layer: int, acts: dict, ranked: list[dict]) -> None:
    """Each ranked feature's decoder cosine with the probe direction and, when the transcoder sits at or below the
    probe layer, its direct attribution to the probe logit (harmful minus benign)."""
    pl = ctx.probe.best_layer
    w = ctx.probe.direction(pl)
    cos = decoder_cosines(tc, w)
    for r in ranked:
        r["cos_probe"] = float(cos[r["feature"]])
    if layer <= pl:
        attr = {k: direct_probe_attribution(acts[k], tc, w).mean(0) for k in ("harmful", "benign")}
        for r in ranked:
            r["attribution_harmful_minus_benign"] = float(attr["harmful"][r["feature"]] - attr["benign"][r["feature"]])
