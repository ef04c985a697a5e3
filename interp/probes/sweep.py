"""Cross-validated probing over layers and depths, with baselines on identical splits.

The unit of work is :func:`interp.probes.oof.oof_scores`: out-of-fold probabilities ``[N, D]`` for one layer and
method. :func:`run_sweep` streams layers one at a time through a ``loader(layer, position) -> LayerData``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from interp import UserError
from interp.formatting import ci, diff, probability, rate
from interp.probes.calibration import (
    expected_calibration_error,
    rates_at_threshold,
    reliability_curve,
)
from interp.probes.cv import Split, grouped_folds, source_split
from interp.probes.data import LayerData
from interp.probes.loso import leave_one_source_out
from interp.probes.metrics import summarize
from interp.probes.oof import ProbeConfig, oof_scores, shuffled_labels
from interp.probes.probeset import jsonable
from interp.probes.protocol import Schedule, per_answer_threshold
from interp.probes.select import choose_layer
from interp.probes.tables import loso_table
from interp.results import Result
from interp.threads import LoadFollower

BASELINES = ("last_token", "prompt", "diffmeans", "shuffled", "ngram")


def _summ(p: np.ndarray, data: LayerData, mask: np.ndarray, n_boot: int, seed: int) -> dict:
    rows, cols = np.nonzero(mask)
    return summarize(p[rows, cols], data.label_grid[rows, cols], data.groups[rows], n_boot=n_boot, seed=seed)


def _per_depth(p: np.ndarray, data: LayerData, n_boot: int, seed: int) -> list[dict | None]:
    out = []
    for k in range(p.shape[1]):
        m = np.zeros_like(data.valid)
        m[:, k] = np.isfinite(p[:, k])
        ok = m[:, k]
        two = ok.any() and len(np.unique(data.label_grid[ok, k])) == 2
        out.append(_summ(p, data, m, n_boot, seed) if two else None)
    return out


@dataclass
class SweepPlan:
    """Layer/depth sweep settings (beside :class:`ProbeConfig`)."""

    layers: list[int] | None = None
    folds: int = 5
    seed: int = 0
    n_boot: int = 1000
    per_depth_fit: bool = False
    baselines: tuple[str, ...] = BASELINES
    target_fpr: float = 0.01
    control_sources: list[str] | None = None
    train_sources: list[str] | None = None
    test_sources: list[str] | None = None
    schedule: Schedule | None = None  # the guard's checks per answer (with answer info: per-answer numbers)
    calibrate_on: tuple[str, ...] = ("own", "prefill")  # the benign answers a threshold is set on


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
    labels: np.ndarray | None = field(default=None, repr=False)  # [N, D]: each (row, depth) pair's label

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
        plots.plot_score_histograms(p[rows, cols], self.labels[rows, cols], out / "score_hist", thr,
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
            lines.append(f"threshold {probability(th['threshold'])} at target FPR {self.best['target_fpr']} per "
                         f"answer on {th['n_controls']} own benign answers (out-of-fold; the threshold was chosen on these same "
                         f"answers, so the FPR is in-sample: `anydepth train` reports held-out rates): TPR "
                         f"{rate(th['tpr'])}, FPR {rate(th['fpr'])}")
        d = self.best.get("probe_minus_ngram_auroc")
        if d:
            lines.append(f"probe − n-gram AUROC {diff(d)}: " + ("the probe beats the text baseline" if d["beats"] else
                                                              "no evidence that the probe beats the text baseline"))
        return "\n".join(lines)


def make_split(data: LayerData, cfg: SweepPlan) -> Split:
    if cfg.train_sources or cfg.test_sources:
        if not (cfg.train_sources and cfg.test_sources):
            raise UserError("give both --train-sources and --test-sources")
        return source_split(data.sources, cfg.train_sources, cfg.test_sources, data.groups)
    return grouped_folds(data.y, data.groups, cfg.folds, cfg.seed)


def run_sweep(loader: Callable[[int, str | int], LayerData], layers: list[int], probe: ProbeConfig,
              cfg: SweepPlan, position: str | int = "probe", texts: np.ndarray | None = None,
              answers=None) -> SweepResult:
    """CV every layer with the probe and the baselines; the result holds the out-of-fold probabilities
    ``{method: [L, N, D]}`` in ``oof`` (for plots and ``oof_scores.npz``).

    ``texts [N, D]`` (:func:`interp.probes.ngram.depth_texts`) enables the n-gram baseline, fitted once on the
    same folds (it does not depend on the layer). ``answers`` (:class:`interp.probes.loso.AnswerInfo`: each
    answer as deployed, its kind, its end text) with ``cfg.schedule`` enables the per-answer numbers, counted on
    the guard's checks. ``loso`` is the leave-one-source-out table at the best layer."""
    unknown = set(cfg.baselines) - set(BASELINES)
    if unknown:
        raise UserError(f"unknown baselines {sorted(unknown)}; choose from {BASELINES}")
    baselines = [b for b in cfg.baselines if b != "ngram" or texts is not None]
    methods = ["probe", *baselines]
    ngram = None
    res: dict = {"layers": list(layers), "methods": methods, "per_layer": {m: [] for m in methods},
                 "per_depth": {m: [] for m in methods}, "notes": []}
    if "ngram" in cfg.baselines and texts is None:
        res["notes"].append("baseline ngram skipped: the store records no response text (re-extract)")
    oof: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    ends: list[np.ndarray] = []
    split = data0 = best_layer = None
    best_auc = -np.inf
    with LoadFollower() as load:  # one thread fewer while another process keeps a core busy, restored on any exit
        for layer in tqdm(layers, desc="layers", unit="layer"):
            load.tick()
            data = loader(layer, position)
            if split is None:  # data0: the rows' labels, groups and validity (no activations kept across layers)
                split, data0 = make_split(data, cfg), data.labels_only()
                res.update(depths=data.depths.tolist(), split={"kind": split.kind, "n_folds": split.n_folds},
                           n_examples=int(len(data.y)), n_pairs=int(data.valid.sum()))
            if cfg.per_depth_fit:
                scores = {"probe": oof_scores(data, split, probe, per_depth=True)}
                ends.append(np.full(len(data.y), np.nan))
            else:
                grid, end = oof_scores(data, split, probe, end=True)
                scores = {"probe": grid}
                ends.append(end)
            if "diffmeans" in cfg.baselines:
                dm = replace(probe, method="diffmeans", balance_sources=False, hard_negative_weight=1.0)
                scores["diffmeans"] = oof_scores(data, split, dm, per_depth=cfg.per_depth_fit)
            if "shuffled" in cfg.baselines:
                scores["shuffled"] = _shuffled_baseline(data, split, probe, cfg, res)
            if "last_token" in cfg.baselines:
                scores["last_token"] = _baseline(loader, layer, "last_token", data, split, probe, res)
            if "prompt" in cfg.baselines:
                scores["prompt"] = _prompt_baseline(loader, layer, data, split, probe, res)
            if "ngram" in methods:
                if ngram is None:
                    from interp.probes.ngram import ngram_oof

                    ngram = np.where(data.valid, ngram_oof(texts, data.label_grid, data.valid, split), np.nan)
                scores["ngram"] = ngram
            for m in methods:
                p = scores[m]
                oof[m].append(p.astype(np.float32))
                res["per_layer"][m].append(_summ(p, data, np.isfinite(p), cfg.n_boot, cfg.seed))
                res["per_depth"][m].append(_per_depth(p, data, cfg.n_boot if m == "probe" else 0, cfg.seed))
            auc = res["per_layer"]["probe"][-1]["auroc"]["value"]
            if auc > best_auc:  # the best layer so far (first of ties, as choose_layer): read again for LOSO
                best_auc, best_layer = auc, layer
            del data  # one layer's activations in memory at a time
    res["best_layer"] = choose_layer(layers, [s["auroc"]["value"] for s in res["per_layer"]["probe"]])
    best_i = list(layers).index(res["best_layer"])
    res["best"] = _best_layer_report(oof, ends[best_i], best_i, data0, cfg, answers)
    if "ngram" in methods:
        from interp.probes.metrics import paired_auroc_diff

        p, q = oof["probe"][best_i], oof["ngram"][best_i]
        rows, cols = np.nonzero(np.isfinite(p) & np.isfinite(q))
        res["best"]["probe_minus_ngram_auroc"] = paired_auroc_diff(
            p[rows, cols], q[rows, cols], data0.label_grid[rows, cols], data0.groups[rows], n_boot=cfg.n_boot,
            seed=cfg.seed)
    if split.kind == "grouped":
        res["loso"] = leave_one_source_out(loader(best_layer, position), split, probe, cfg, texts, answers)
    res["notes"] = sorted(set(res["notes"]))
    return SweepResult(**jsonable(res), oof={m: np.stack(v) for m, v in oof.items()},
                       labels=np.array(data0.label_grid))


def _shuffled_baseline(data: LayerData, split: Split, probe: ProbeConfig, cfg: SweepPlan, res: dict
                       ) -> np.ndarray:
    """Probe trained on prompt-shuffled labels (same split); redraws permutations that leave a training fold
    with one class (possible on tiny sets)."""
    for attempt in range(100):
        labels = shuffled_labels(data.y, data.groups, cfg.seed + 1 + attempt)
        if all(len(np.unique(labels[tr & data.valid.any(1)])) == 2 for tr in split.train):
            return oof_scores(data, split, probe, per_depth=cfg.per_depth_fit, labels=labels)
    res["notes"].append("baseline shuffled skipped: no permutation keeps both classes in every training fold")
    return np.full(data.valid.shape, np.nan)


def _baseline(loader, layer, position, data, split, probe, res) -> np.ndarray:
    try:
        other = loader(layer, position)
    except (UserError, KeyError, ValueError) as err:
        res["notes"].append(f"baseline {position} skipped: {err}")
        return np.full(data.valid.shape, np.nan)
    return oof_scores(other.restrict(data.valid), split, probe)


def _prompt_baseline(loader, layer, data, split, probe, res) -> np.ndarray:
    """Prompt-only probe: the probe position at depth 0 if swept, else the last prompt token; one row per prompt,
    its score broadcast to every valid depth."""
    if 0 in data.depths.tolist():
        k = data.depths.tolist().index(0)
        X = data.column(k)
        res["notes"].append("prompt baseline = probe position at depth 0")
    else:
        try:
            X = loader(layer, "prompt").X[:, :1]
        except (UserError, KeyError, ValueError) as err:
            res["notes"].append(f"baseline prompt skipped: {err}")
            return np.full(data.valid.shape, np.nan)
        res["notes"].append("prompt baseline = last prompt token")
    one = LayerData(X=np.ascontiguousarray(X), y=data.y, groups=data.groups, valid=data.valid.any(1, keepdims=True),
                    sources=data.sources, depths=data.depths[:1], layer=data.layer)
    p = oof_scores(one, split, probe)
    return np.where(data.valid, np.broadcast_to(p, data.valid.shape), np.nan)


def _best_layer_report(oof: dict, end: np.ndarray, best_i: int, data: LayerData, cfg: SweepPlan,
                       answers=None) -> dict:
    """At the best layer: calibration (reliability, ECE), per-source scores, per-depth curves with CIs for every
    method, and, with ``answers``, the per-answer threshold at the target FPR on the out-of-fold own benign
    answers with the rates there (in-sample: those answers chose it)."""
    p = oof["probe"][best_i].astype(np.float64)
    rows, cols = np.nonzero(np.isfinite(p))
    probs, y, src = p[rows, cols], data.label_grid[rows, cols], data.sources[rows]
    out = {"target_fpr": cfg.target_fpr, "calibrate_on": list(cfg.calibrate_on),
           "at_0.5": rates_at_threshold(probs, y, 0.5),
           "reliability": reliability_curve(probs, y), "ece": expected_calibration_error(probs, y),
           "per_depth": {m: _per_depth(v[best_i].astype(np.float64), data, cfg.n_boot, cfg.seed)
                         for m, v in oof.items()}}
    thr = None
    if answers is not None and cfg.schedule is not None:
        from interp.probes.answers import (
            answer_scores,
            calibration_rows,
            no_calibration_answers,
            rates,
            require_complete_answers,
            warn_calibration,
        )

        ans = answer_scores(p, data.depths, answers.deployed, cfg.schedule, end if np.isfinite(end).any() else None)
        population = calibration_rows(data.y, answers.kinds, data.sources, cfg.calibrate_on, cfg.control_sources)
        if not population.any():
            raise no_calibration_answers(cfg.calibrate_on, answers.kinds, data.y)
        require_complete_answers(ans.excluded[population], cfg.schedule.answer_length)
        incomplete = int((population & ans.excluded).sum())
        population &= ~np.isnan(ans.score)
        calib = per_answer_threshold(ans.score[population], cfg.target_fpr)
        warn_calibration(calib, incomplete, cfg.schedule.answer_length, cfg.target_fpr)
        thr = calib["threshold"]
        out["threshold"] = rates(ans.score, data.y, data.groups, data.sources, answers.kinds, thr,
                                 cfg.calibrate_on) | {
            "n_controls": int(population.sum()), "resolved": calib["resolved"], "resolution": calib["resolution"],
            "schedule": cfg.schedule.to_dict(), "answers": ans.info(),
            "rule": "per answer on the guard's checks; threshold at the target FPR on these out-of-fold own benign "
                    "answers (so the FPR is in-sample; `anydepth train` reports held-out rates)"}
        if not calib["resolved"]:  # the threshold sits above every answer: its in-sample FPR of 0 says nothing
            out["threshold"]["fpr"] = None
    per_source = {}
    for s in np.unique(src):
        m = src == s
        per_source[str(s)] = {"n": int(m.sum()), "label_mean": float(y[m].mean()), "mean_score": float(probs[m].mean()),
                              "flagged_at_0.5": float((probs[m] >= 0.5).mean())}
        if thr is not None:
            from interp.probes.calibration import fires

            per_source[str(s)]["flagged_at_threshold"] = float(fires(probs[m], thr).mean())
    out["per_source"] = per_source
    return out
