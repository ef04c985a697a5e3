"""The probe stages: :func:`sweep` (grouped-CV probes over layers × depths with baselines) and :func:`train` (the
held-out probe set the guard loads), each on a store, typed in and out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from interp import UserError
from interp.config import save_config, to_dict
from interp.extract.store import ActivationStore, canonical_hook
from interp.formatting import ci, diff, rate
from interp.probes.data import StoreSliceConfig, examples_meta, load_layer, require_finished
from interp.probes.oof import ProbeConfig
from interp.probes.probeset import ProbeSet, jsonable
from interp.probes.protocol import ScheduleConfig, check_schedule
from interp.probes.stores import check_depths, open_store, position_arg, store_answers, store_texts
from interp.probes.sweep import SweepPlan, run_sweep
from interp.probes.tables import loso_table
from interp.probes.train import TrainConfig, save_probeset, train_probeset
from interp.results import Result

__all__ = ["SweepConfig", "SweepResult", "sweep", "train"]


@dataclass
class SweepConfig(StoreSliceConfig, ScheduleConfig):
    """Which store and which slice of it to sweep, and how (``anydepth sweep``)."""

    out: str = field(default="", metadata={"help": "output directory (JSON, plots, config)"})
    n_boot: int = field(default=1000, metadata={"help": "bootstrap resamples (by prompt) for 95% CIs"})
    per_depth_fit: bool = field(default=False, metadata={"help": "train one probe per depth instead of pooling"})
    baselines: list[str] = field(default_factory=lambda: ["last_token", "prompt", "diffmeans", "shuffled", "ngram"],
                                 metadata={"help": "baselines on identical splits"})
    train_sources: list[str] | None = field(default=None, metadata={"help": "train on these sources only ..."})
    test_sources: list[str] | None = field(default=None, metadata={"help": "... and test on these"})

    def plan(self, store, layers: list[int]) -> SweepPlan:
        """The sweep's settings for ``store`` (its answer length sets the guard schedule)."""
        return SweepPlan(layers=layers, folds=self.folds, seed=self.seed, n_boot=self.n_boot,
                         per_depth_fit=self.per_depth_fit, baselines=tuple(self.baselines), target_fpr=self.target_fpr,
                         control_sources=self.control_sources, train_sources=self.train_sources,
                         test_sources=self.test_sources, schedule=self.schedule(getattr(store, "answer_length", None)),
                         calibrate_on=tuple(self.calibrate_on))


@dataclass
class SweepResult(Result):
    """Out-of-fold numbers per method × layer (× depth), the best layer's report and leave-one-source-out.

    ``per_layer[method][i]`` and ``per_depth[method][i][k]`` are metric summaries (AUROC, accuracy, TPR at 1% FPR
    with CIs over prompt groups) at ``layers[i]`` and ``depths[k]``; ``oof`` holds the out-of-fold probabilities
    ``{method: [L, N, D]}`` (saved as ``oof_scores.npz``, not in the JSON).
    """

    kind = "sweep"
    layers: list[int]
    depths: list[int]
    methods: list[str]
    best_layer: int
    per_layer: dict[str, list[dict]]
    per_depth: dict[str, list[list[dict | None]]]
    best: dict[str, Any]
    split: dict[str, Any] = field(default_factory=dict)
    n_examples: int = 0
    n_pairs: int = 0
    loso: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    hook: str = ""
    position: str | int = "probe"
    store: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    oof: dict[str, np.ndarray] | None = field(default=None, repr=False)
    labels: np.ndarray | None = field(default=None, repr=False)

    def auroc(self, method: str = "probe", layer: int | None = None) -> dict:
        """``method``'s pooled AUROC summary at ``layer`` (default the best)."""
        return self.per_layer[method][self.layers.index(self.best_layer if layer is None else layer)]["auroc"]

    def save(self, out: str | Path) -> Path:
        """``sweep.json``, ``oof_scores.npz`` and the figures into folder ``out``; returns the JSON's path."""
        from interp.probes import plots

        out = Path(out)
        path = super().save(out / "sweep.json")
        if self.oof is None:
            return path
        np.savez_compressed(out / "oof_scores.npz", **self.oof)
        res = self.to_json()
        p = self.oof["probe"][self.layers.index(self.best_layer)]
        rows, cols = np.nonzero(np.isfinite(p))
        thr = (self.best.get("threshold") or {}).get("threshold")
        plots.plot_layer_sweep(res, out / "layer_sweep")
        plots.plot_layer_depth_heatmap(res, out / "layer_depth_auroc")
        plots.plot_depth_curve(res, out / "depth_curve")
        plots.plot_score_histograms(p[rows, cols], self.labels[rows], out / "score_hist", thr,
                                    f"out-of-fold scores, layer {self.best_layer}, all depths")
        plots.plot_reliability(self.best["reliability"], out / "reliability", self.best["ece"])
        return path

    def summary(self) -> str:
        lines = ["leave-one-source-out (probe and n-gram trained without the source; AUROC over pairs scored by the "
                 "same fold model; per-answer rate at a threshold set on the other sources' own benign answers):",
                 *loso_table(self.loso), ""] if self.loso else []
        for m in self.methods:
            lines.append(f"layer {self.best_layer} {m:>10s}: AUROC {ci(self.auroc(m))}")
        th = self.best.get("threshold")
        if th:
            lines.append(f"threshold {th['threshold']:.4f} at target FPR {self.best['target_fpr']} per answer on "
                         f"{th['n_controls']} own benign answers (out-of-fold; the threshold was chosen on these same "
                         f"answers, so the FPR is in-sample: `anydepth train` reports held-out rates): TPR "
                         f"{rate(th['tpr'])}, FPR {rate(th['fpr'])}")
        d = self.best.get("probe_minus_ngram_auroc")
        if d:
            lines.append(f"probe − n-gram AUROC {diff(d)}: " + ("the probe beats the text baseline" if d["beats"] else
                                                              "no evidence that the probe beats the text baseline"))
        return "\n".join(lines)


def sweep(store: str | Path | ActivationStore | None = None, cfg: SweepConfig | None = None,
          probe: ProbeConfig | None = None, *, out: str | Path | None = None) -> SweepResult:
    """Cross-validate probes (and the baselines on the same folds) over ``cfg``'s layers and depths of ``store``
    (default ``cfg.store``); saved into ``out`` (default ``cfg.out``) when one is given."""
    cfg, probe = cfg or SweepConfig(), probe or ProbeConfig()
    out = out if out is not None else (cfg.out or None)
    opened = open_store(store if store is not None else cfg.store)
    try:
        result = _sweep_open(opened, cfg, probe)
    finally:
        if opened is not store:
            opened.close()
    result.store = str(store if isinstance(store, (str, Path)) else cfg.store or opened.path)
    if out:
        result.save(out)
        save_config(cfg, Path(out) / "config.json")
        save_config(probe, Path(out) / "probe_config.json")
    return result


def _sweep_open(store: ActivationStore, cfg: SweepConfig, probe: ProbeConfig) -> SweepResult:
    require_finished(store, cfg.allow_partial)
    hook = canonical_hook(cfg.hook) if cfg.hook else store.hooks[0]
    cfg.validate()
    layers = cfg.resolve_layers(store)
    check_schedule(cfg)
    plan = cfg.plan(store, layers)
    check_depths(store, cfg.depths)
    meta = examples_meta(store)
    answers = store_answers(store, meta) if not cfg.depths else None  # every check the guard makes: whole grid only
    res = run_sweep(lambda layer, position: load_layer(store, hook, layer, position, cfg.depths), layers, probe, plan,
                    position_arg(cfg.position), texts=store_texts(store, cfg.depths, meta), answers=answers)
    if answers is None:
        res["notes"].append("per-answer numbers skipped: --depths keeps only some of the checks the guard makes")
    oof, labels = res.pop("_oof"), res.pop("_labels")
    return SweepResult(**jsonable(res), hook=hook, position=cfg.position, provenance=jsonable(store.provenance),
                       config={"sweep": to_dict(cfg), "probe": to_dict(probe)}, oof=oof, labels=labels)


def train(store: str | Path | ActivationStore | None = None, cfg: TrainConfig | None = None,
          probe: ProbeConfig | None = None, *, out: str | Path | None = None, progress: bool = True) -> ProbeSet:
    """Fit the held-out probe set on ``store`` (default ``cfg.store``): layer choice by grouped CV on the training
    prompts, the threshold on the calibration prompts' own answers, every number on the test prompts
    (``probes.metrics["test"]``). Saved with its configs into ``out`` (default ``cfg.out``) when one is given."""
    from interp.naming import check_out

    cfg, probe = cfg or TrainConfig(), probe or ProbeConfig()
    out = out if out is not None else (cfg.out or None)
    if out:
        check_out(out, "file" if Path(out).suffix in (".json", ".safetensors") else "dir")
    opened = open_store(store if store is not None else cfg.store)
    try:
        probes = train_probeset(opened, cfg, probe, progress=progress)
    finally:
        if opened is not store:
            opened.close()
    if out:
        save_probeset(probes, cfg, probe, out)
    return probes


def require_out(out: str | None) -> str:
    """The CLI's ``--out``, which the library leaves optional."""
    if not out:
        raise UserError("give --out DIR")
    return out
