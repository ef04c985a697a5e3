"""Fit one probe per layer on a store and pick the layer and threshold by grouped CV: a :class:`ProbeSet`.

Grouped CV (by prompt) picks the best layer (unless ``layer`` is given) and sets the threshold at a target FPR on
held-out (out-of-fold) benign controls; the saved probes are then refitted on all rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from interp import UserError
from interp.probes.data import StoreSliceConfig
from interp.probes.probeset import ProbeSet
from interp.probes.sweep import ProbeConfig


@dataclass
class TrainConfig(StoreSliceConfig):
    """Store slice, layer choice and threshold."""

    out: str = field(default="", metadata={"help": "output directory for probeset.{safetensors,json}"})
    layer: int | None = field(default=None, metadata={"help": "fix the best layer instead of choosing by CV AUROC"})
    n_boot: int = field(default=200, metadata={"help": "bootstrap resamples for the CIs stored with the probes"})


def train_probeset(store, cfg: TrainConfig, probe: ProbeConfig, *, progress: bool = True) -> ProbeSet:
    """Fit ``probe`` on every selected layer of an open :class:`~interp.store.ActivationStore`."""
    from tqdm.auto import tqdm

    from interp.config import to_dict
    from interp.probes.calibration import rates_at_threshold, threshold_at_fpr
    from interp.probes.cv import grouped_folds
    from interp.probes.data import load_layer
    from interp.probes.metrics import summarize
    from interp.probes.probeset import jsonable
    from interp.probes.sweep import fit_probes, oof_scores
    from interp.store import canonical_hook

    position = int(cfg.position) if str(cfg.position).lstrip("-").isdigit() else cfg.position
    hook = canonical_hook(cfg.hook) if cfg.hook else store.hooks[0]
    layers = cfg.layers or list(store.layers)
    if cfg.layer is not None and cfg.layer not in layers:
        raise UserError(f"--layer {cfg.layer} is not among the fitted layers {layers}")
    provenance = jsonable(store.provenance)
    split, params, metrics, oofs = None, [], [], []
    for layer in tqdm(layers, desc="layers", unit="layer", disable=not progress):
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
    return ProbeSet(
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


def save_probeset(probes: ProbeSet, cfg: TrainConfig, probe: ProbeConfig, out: str | Path) -> Path:
    """Save the probe set with both configs beside it."""
    from interp.config import save_config

    path = probes.save(Path(out))
    save_config(cfg, Path(out) / "config.json")
    save_config(probe, Path(out) / "probe_config.json")
    return path
