"""``anydepth train``: fit one probe per layer on a store and save a ``ProbeSet`` (safetensors + JSON).

Grouped CV (by prompt) picks the best layer (unless ``--layer`` is given) and sets the threshold at a target FPR on
held-out (out-of-fold) benign controls; the saved probes are then refitted on all rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from interp.config import add_arguments, from_namespace


@dataclass
class TrainConfig:
    """Store slice, layer choice and threshold."""

    store: str = field(default="", metadata={"help": "activation store (.h5) written by `anydepth extract`"})
    out: str = field(default="", metadata={"help": "output directory for probeset.{safetensors,json}"})
    hook: str = field(default="", metadata={"help": "hook to probe (default: the store's first)"})
    position: str = field(default="probe", metadata={"help": "'probe' or an index into the Safety-Token span"})
    layers: list[int] | None = field(default=None, metadata={"help": "layers to fit (default: all stored)"})
    depths: list[int] | None = field(default=None, metadata={"help": "depth values to train on (default: all)"})
    layer: int | None = field(default=None, metadata={"help": "fix the best layer instead of choosing by CV AUROC"})
    folds: int = field(default=5, metadata={"help": "grouped CV folds (by prompt)"})
    seed: int = field(default=0, metadata={"help": "fold / bootstrap seed"})
    n_boot: int = field(default=200, metadata={"help": "bootstrap resamples for the CIs stored with the probes"})
    target_fpr: float = field(default=0.01, metadata={"help": "FPR on benign controls for the threshold"})
    control_sources: list[str] | None = field(default=None, metadata={"help": "benign sources used as controls"})


def register(subparsers) -> None:
    from interp.probes.sweep import ProbeConfig

    p = subparsers.add_parser("train", help="fit per-layer probes on a store and save a ProbeSet")
    add_arguments(p, TrainConfig)
    add_arguments(p, ProbeConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    import numpy as np
    from tqdm.auto import tqdm

    from interp import UserError
    from interp.commands.sweep import open_store, position_arg
    from interp.config import save_config, to_dict
    from interp.probes.calibration import rates_at_threshold, threshold_at_fpr
    from interp.probes.cv import grouped_folds
    from interp.probes.data import load_layer
    from interp.probes.metrics import summarize
    from interp.probes.probeset import ProbeSet, jsonable
    from interp.probes.sweep import ProbeConfig, fit_probes, oof_scores
    from interp.store import canonical_hook

    cfg, probe = from_namespace(TrainConfig, args), from_namespace(ProbeConfig, args)
    if not cfg.out:
        raise UserError("give --out DIR")
    store = open_store(cfg.store)
    position = position_arg(cfg.position)
    with store:
        hook = canonical_hook(cfg.hook) if cfg.hook else store.hooks[0]
        layers = cfg.layers or list(store.layers)
        if cfg.layer is not None and cfg.layer not in layers:
            raise UserError(f"--layer {cfg.layer} is not among the fitted layers {layers}")
        provenance = jsonable(store.provenance)
        split, params, metrics, oofs = None, [], [], []
        for layer in tqdm(layers, desc="layers", unit="layer"):
            data = load_layer(store, hook, layer, position, cfg.depths)
            split = split or grouped_folds(data.y, data.groups, cfg.folds, cfg.seed)
            p = oof_scores(data, split, probe)
            rows, cols = np.nonzero(np.isfinite(p))
            metrics.append(summarize(p[rows, cols], data.y[rows], data.groups[rows], n_boot=cfg.n_boot,
                                     seed=cfg.seed))
            oofs.append((p[rows, cols], data.y[rows], data.sources[rows]))
            X, y, _, _ = data.flat()
            params.append(fit_probes(X, y, np.ones((1, len(y)), bool), probe)[0])
    aurocs = [m["auroc"]["value"] for m in metrics]
    best = cfg.layer if cfg.layer is not None else layers[int(np.nanargmax(aurocs))]
    scores, y, sources = oofs[layers.index(best)]
    control = (y == 0) & (np.isin(sources, cfg.control_sources) if cfg.control_sources else True)
    if not control.any():
        raise UserError("no benign control rows for the threshold (check --control-sources)")
    thr = threshold_at_fpr(scores[control], cfg.target_fpr)
    std = [pp.scale for pp in params]
    probes = ProbeSet(
        layers=layers, weights=np.stack([pp.coef.reshape(-1) for pp in params]),
        bias=np.array([float(pp.intercept) for pp in params]), hook=hook, position=position, best_layer=int(best),
        threshold=thr, mean=None if std[0] is None else np.stack([pp.mean.reshape(-1) for pp in params]),
        std=None if std[0] is None else np.stack([s.reshape(-1) for s in std]),
        kind=probe.method,
        thresholds={"target_fpr": cfg.target_fpr, "control_sources": cfg.control_sources,
                    "n_controls": int(control.sum()), "oof": rates_at_threshold(scores, y, thr),
                    "at_0.5": rates_at_threshold(scores, y, 0.5)},
        metrics={"cv": {str(layer): m for layer, m in zip(layers, metrics)}, "selected_by": (
            "--layer" if cfg.layer is not None else "grouped-CV AUROC")},
        provenance=provenance, config={"train": to_dict(cfg), "probe": to_dict(probe)})
    path = probes.save(Path(cfg.out))
    save_config(cfg, Path(cfg.out) / "config.json")
    save_config(probe, Path(cfg.out) / "probe_config.json")
    a = metrics[layers.index(best)]["auroc"]
    print(f"best layer {best}: CV AUROC {a['value']:.3f} [{a['lo']:.3f}, {a['hi']:.3f}]; threshold {thr:.4f} "
          f"(target FPR {cfg.target_fpr}: out-of-fold TPR {probes.thresholds['oof']['tpr']:.3f}, "
          f"FPR {probes.thresholds['oof']['fpr']:.3f})")
    print(f"wrote {path}")
    return 0
