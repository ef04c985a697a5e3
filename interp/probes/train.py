"""Fit one probe per layer on a store under the held-out protocol and save a :class:`ProbeSet`.

The store's prompt groups are split three ways (:func:`interp.probes.protocol.three_way_split`):

* **train**: grouped CV over these prompts picks the layer (unless ``layer`` is given); the saved probes are
  refitted on all of them, and on nothing else;
* **calibration**: only the threshold. Each benign calibration answer is scored at the depths the guard's
  schedule would check it (:class:`~interp.probes.protocol.Schedule`), aggregated by the schedule's rule (any
  check, k of the last n, an EMA), and the threshold is set so that at most ``target_fpr`` of these answers
  fire, the event the guard's false alarm is;
* **test**: every number reported (AUROC per check, per-answer TPR and FPR at the frozen threshold), beside the
  n-gram, last-token and prompt-only baselines fitted on the same training prompts.

The ProbeSet records the split (prompt keys and groups per role) so that evaluations exclude its training and
calibration prompts, and the schedule (with its aggregation rule) it was calibrated for. With ``combine_layers``
the guard's score is the mean of those layers' probe logits (a multi-layer probe), and the threshold and the test
numbers are computed on that combined score.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from interp import UserError
from interp.guard.aggregate import AggregateConfig
from interp.probes.data import LayerData, StoreSliceConfig
from interp.probes.probeset import ProbeSet
from interp.probes.protocol import Schedule, SplitConfig, check_schedule
from interp.probes.sweep import ProbeConfig


@dataclass
class ScheduleConfig(AggregateConfig):
    """The guard schedule a threshold is calibrated for (use the same options with ``anydepth guard`` /
    ``evaluate``)."""

    stride: int = field(default=25, metadata={"help": "guard check stride the threshold is calibrated for"})
    early_checks: list[int] = field(default_factory=list, metadata={"help": "guard's extra early check depths"})
    check_at_start: bool = field(default=False, metadata={"help": "the guard also checks at depth 0"})
    final_check: bool = field(default=True, metadata={"help": "the guard checks an answer's unchecked tail"})

    def schedule(self) -> Schedule:
        return Schedule.of(self)


@dataclass
class TrainConfig(StoreSliceConfig, SplitConfig, ScheduleConfig):
    """Store slice, split, schedule, layer choice and threshold."""

    out: str = field(default="", metadata={"help": "output directory for probeset.{safetensors,json}"})
    layer: int | None = field(default=None, metadata={"help": "fix the best layer instead of choosing by CV AUROC"})
    combine_layers: list[int] = field(default_factory=list, metadata={
        "help": "a multi-layer probe: the guard scores the mean of these layers' probe logits (each probe fitted "
                "on the training prompts; the threshold calibrated per answer on the combined score)"})
    combine_top: int = field(default=0, metadata={
        "help": "a multi-layer probe over the K layers with the best grouped-CV AUROC on the training prompts "
                "(chosen without the calibration or test prompts; 0: off)"})
    n_boot: int = field(default=200, metadata={"help": "bootstrap resamples for the CIs stored with the probes"})

    def validate(self) -> None:
        """Every option of ``anydepth train`` (store slice, split, schedule, layer), one line per problem."""
        StoreSliceConfig.validate(self)
        SplitConfig.validate(self)
        check_schedule(self)
        if self.layer is not None and self.layer < 0:
            raise UserError(f"--layer must be a stored layer >= 0, got {self.layer}")
        if self.n_boot < 0:
            raise UserError(f"--n-boot must be >= 0, got {self.n_boot}")
        if self.combine_top:
            if self.combine_top < 2:
                raise UserError(f"--combine-top needs 2 or more layers, got {self.combine_top} (0 turns it off)")
            if self.combine_layers or self.layer is not None:
                raise UserError("--combine-top excludes --combine-layers and --layer (it chooses the layers itself)")
            if self.calib_fraction == 0:
                raise UserError("--combine-top needs a calibration split (--calib-fraction > 0)")


def _subset(data: LayerData, m: np.ndarray) -> LayerData:
    return LayerData(X=data.X[m], y=data.y[m], groups=data.groups[m], valid=data.valid[m], sources=data.sources[m],
                     depths=data.depths, layer=data.layer)


def _scores(params, X: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Probability per (row, depth) of one fitted probe, NaN on invalid pairs."""
    out = np.full(valid.shape, np.nan)
    rows, cols = np.nonzero(valid)
    if len(rows):
        out[rows, cols] = 1.0 / (1.0 + np.exp(-params.logit(np.ascontiguousarray(X[rows, cols], np.float32))))
    return out


def _combined_scores(params: list, Xs: list[np.ndarray], valid: np.ndarray) -> np.ndarray:
    """A multi-layer probe's probability per (row, depth): sigmoid of the mean of the layers' logits, NaN on
    invalid pairs (:meth:`interp.probes.probeset.ProbeSet.combined_score` on the saved probes)."""
    out = np.full(valid.shape, np.nan)
    rows, cols = np.nonzero(valid)
    if len(rows):
        z = np.mean([pp.logit(np.ascontiguousarray(X[rows, cols], np.float32)) for pp, X in zip(params, Xs)], 0)
        out[rows, cols] = 1.0 / (1.0 + np.exp(-z))
    return out


def combined_layers(cfg: TrainConfig, store, layers: list[int]) -> list[int]:
    """``--combine-layers`` checked against the fitted ``layers`` (one-line errors); [] for a single-layer probe."""
    combine = sorted(set(int(x) for x in cfg.combine_layers))
    if not combine:
        return []
    stored = [int(x) for x in store.layers]
    for layer in combine:
        if layer not in stored:
            raise UserError(f"--combine-layers {layer}: the store has no layer {layer} (it holds {stored}); "
                            "re-extract with it or combine stored layers")
        if layer not in layers:
            raise UserError(f"--combine-layers {layer} is not among the fitted --layers {layers}; add it to --layers")
    if len(combine) < 2:
        raise UserError(f"--combine-layers needs two or more layers (for one, use --layer {combine[0]})")
    if cfg.layer is not None:
        raise UserError("--layer and --combine-layers exclude each other (the combined probe reads its own layers)")
    if cfg.calib_fraction == 0:
        raise UserError("--combine-layers needs a calibration split (--calib-fraction > 0): out-of-fold scores of "
                        "the combined probe are not computed")
    return combine


def _pairs_summary(p: np.ndarray, y: np.ndarray, groups: np.ndarray, n_boot: int, seed: int) -> dict | None:
    from interp.probes.metrics import summarize

    rows, cols = np.nonzero(np.isfinite(p))
    if len(rows) == 0 or len(np.unique(y[rows])) < 2:
        return None
    return summarize(p[rows, cols], y[rows], groups[rows], n_boot=n_boot, seed=seed)


def train_probeset(store, cfg: TrainConfig, probe: ProbeConfig, *, progress: bool = True) -> ProbeSet:
    """Fit ``probe`` on every selected layer of an open :class:`~interp.extract.store.ActivationStore` (see module doc)."""
    from tqdm.auto import tqdm

    from interp.config import to_dict
    from interp.extract.store import canonical_hook
    from interp.probes.cv import grouped_folds
    from interp.probes.data import examples_meta, load_layer, require_finished
    from interp.probes.metrics import summarize
    from interp.probes.probeset import jsonable
    from interp.probes.protocol import describe_split, three_way_split
    from interp.probes.select import answer_threshold, choose_layer, control_rows
    from interp.probes.sweep import fit_probes, oof_scores

    position = int(cfg.position) if str(cfg.position).lstrip("-").isdigit() else cfg.position
    hook = canonical_hook(cfg.hook) if cfg.hook else store.hooks[0]
    cfg.validate()
    layers = cfg.resolve_layers(store)
    if cfg.layer is not None and cfg.layer not in layers:
        raise UserError(f"--layer {cfg.layer} is not among the fitted layers {layers}")
    combine = combined_layers(cfg, store, layers)
    if cfg.combine_top > len(layers):
        raise UserError(f"--combine-top {cfg.combine_top} exceeds the {len(layers)} fitted layers")
    schedule = cfg.schedule()
    require_finished(store, cfg.allow_partial)
    meta = examples_meta(store)
    done = meta["done"]
    y, groups = meta["y"][done], meta["groups"][done]
    sources, prompts, n_tokens = meta["sources"][done], meta["prompts"][done], meta["n_tokens"][done]
    roles = three_way_split(groups, y, cfg, cfg.seed)
    train_m, cal_m, test_m = (roles == r for r in ("train", "calibration", "test"))
    split = grouped_folds(y[train_m], groups[train_m], cfg.folds, cfg.seed)

    params, metrics, oofs = [], [], []
    for layer in tqdm(layers, desc="layers (CV on train prompts)", unit="layer", disable=not progress):
        tr = _subset(load_layer(store, hook, layer, position, cfg.depths), train_m)
        p = oof_scores(tr, split, probe)
        rows, cols = np.nonzero(np.isfinite(p))
        metrics.append(summarize(p[rows, cols], tr.y[rows], tr.groups[rows], n_boot=cfg.n_boot, seed=cfg.seed))
        oofs.append(p)
        X, yy, _, _ = tr.flat()
        params.append(fit_probes(X, yy, np.ones((1, len(yy)), bool), probe)[0])
    best = choose_layer(layers, [m["auroc"]["value"] for m in metrics], cfg.layer)
    bi = layers.index(best)
    if cfg.combine_top:  # the K best layers by CV on the training prompts (ties: the shallower first)
        order = np.argsort([-m["auroc"]["value"] for m in metrics], kind="stable")
        combine = sorted(int(layers[i]) for i in order[:cfg.combine_top])
    if combine:  # the guard's score: the mean of the combined layers' logits; baselines at the deepest of them
        read = {layer: load_layer(store, hook, layer, position, cfg.depths) for layer in combine}
        best_data = read[combine[-1]]
        scores = _combined_scores([params[layers.index(layer)] for layer in combine],
                                  [read[layer].X for layer in combine], best_data.valid)
        del read
    else:
        best_data = load_layer(store, hook, best, position, cfg.depths)  # all rows: calibration and test are scored
        scores = _scores(params[bi], best_data.X, best_data.valid)
    depths = best_data.depths
    control = control_rows(y, sources, cfg.control_sources)

    # ---- threshold: per benign calibration answer, its score under the schedule and its aggregation rule
    if cal_m.any():
        cal_rows = control & cal_m
        basis = "calibration prompts (held out from training)"
        cal_scores = scores
    else:
        cal_rows = control & train_m
        basis = "out-of-fold scores of the training prompts (no calibration split: in-sample calibration)"
        cal_scores = np.full(scores.shape, np.nan)
        cal_scores[train_m] = oofs[bi]
    if not cal_rows.any():
        raise UserError("no benign calibration answers for the threshold (check --control-sources and "
                        "--calib-fraction)")
    calib = answer_threshold(cal_scores[cal_rows], depths, n_tokens[cal_rows], cfg.target_fpr, schedule)
    calib.pop("answer_scores")
    calib["basis"] = basis
    if not calib["resolved"]:
        warnings.warn(f"{calib['n_answers']} benign calibration answers cannot resolve a per-answer FPR of "
                      f"{cfg.target_fpr} (that needs ≥ {calib['answers_needed']}); the threshold sits above every "
                      f"calibration answer, and the finest FPR this set resolves is {calib['resolution']:.3f}",
                      stacklevel=2)
    thr = calib["threshold"]

    test = held_out_report(store, best_data, cfg, probe, meta, roles, scores, thr, schedule) if test_m.any() else None
    split_record = describe_split(roles, groups, prompts, y, sources)
    return ProbeSet(
        layers=layers, weights=np.stack([pp.coef.reshape(-1) for pp in params]),
        bias=np.array([float(pp.intercept) for pp in params]), hook=hook, position=position, best_layer=int(best),
        threshold=thr,
        mean=None if params[0].scale is None else np.stack([pp.mean.reshape(-1) for pp in params]),
        std=None if params[0].scale is None else np.stack([pp.scale.reshape(-1) for pp in params]),
        kind=probe.method,
        thresholds={"target_fpr": cfg.target_fpr,
                    "rule": f"per answer ({schedule.aggregation}): fires when the maximum over the answer's "
                            "scheduled checks of the rule's statistic exceeds the threshold",
                    "aggregate": schedule.rule.to_dict(), "control_sources": cfg.control_sources,
                    "calibration": calib},
        metrics={"cv_train": {str(layer): m for layer, m in zip(layers, metrics)},
                 "selected_by": "--layer" if cfg.layer is not None else "grouped-CV AUROC on the training prompts"
                 + (f" (the top {cfg.combine_top} layers combined)" if cfg.combine_top else ""),
                 "readout": {"layers": combine or [int(best)],
                             "rule": "mean of the layers' probe logits" if combine else "the best layer's probe"},
                 "test": test},
        provenance=jsonable(store.provenance), config={"train": to_dict(cfg), "probe": to_dict(probe)},
        split=split_record, schedule=schedule.to_dict(), combine=combine)


def held_out_report(store, best: LayerData, cfg: TrainConfig, probe: ProbeConfig, meta: dict, roles: np.ndarray,
                    scores: np.ndarray, threshold: float, schedule: Schedule) -> dict:
    """Numbers on the test prompts only: the probe (``scores`` at the layer of ``best``) beside its baselines
    (fitted on the training prompts), per check (pooled and per depth) and per answer at the frozen threshold."""
    from interp.extract.store import canonical_hook
    from interp.probes.data import load_layer
    from interp.probes.metrics import paired_auroc_diff
    from interp.probes.protocol import answer_scores, assert_disjoint
    from interp.probes.sweep import fit_probes, shuffled_labels
    from interp.stats import wilson

    done = meta["done"]
    y, groups, n_tokens = meta["y"][done], meta["groups"][done], meta["n_tokens"][done]
    train_m, test_m = roles == "train", roles == "test"
    assert_disjoint(groups[test_m], groups[roles != "test"], "test prompts")
    depths, hook = best.depths, canonical_hook(cfg.hook) if cfg.hook else store.hooks[0]
    valid = np.isfinite(scores)
    methods = {"probe": scores}
    notes = []
    for pos in ("last_token", "prompt"):
        try:
            other = load_layer(store, hook, best.layer, pos, cfg.depths)
        except (UserError, KeyError, ValueError) as err:
            notes.append(f"baseline {pos} skipped: {err}")
            continue
        if pos == "prompt":  # one row per prompt: the last prompt token
            X, yy = other.X[train_m][:, 0], other.y[train_m]
        else:
            X, yy, _, _ = _subset(other, train_m).flat()
        pp = fit_probes(X, yy, np.ones((1, len(yy)), bool), probe)[0]
        methods[pos] = np.where(valid, _scores(pp, other.X, np.ones_like(valid)), np.nan)
    tr = _subset(best, train_m)
    X, _, rows, _ = tr.flat()
    fake = shuffled_labels(tr.y, tr.groups, cfg.seed + 1)[rows]  # prompt-level permutation of the labels
    if len(np.unique(fake)) == 2:
        methods["shuffled"] = _scores(fit_probes(X, fake, np.ones((1, len(fake)), bool), probe)[0], best.X, valid)
    if "response_chars" in meta:
        from interp.probes.ngram import depth_texts, fit_predict

        texts = depth_texts(meta["prompts"][done], meta["response"][done], meta["response_chars"][done])
        tr_r, tr_c = np.nonzero(valid & train_m[:, None])
        te_r, te_c = np.nonzero(valid & test_m[:, None])
        ng = np.full(valid.shape, np.nan)
        ng[te_r, te_c] = fit_predict(texts[tr_r, tr_c], y[tr_r], texts[te_r, te_c])
        methods["ngram"] = ng
    else:
        notes.append("baseline ngram skipped: the store records no response text (re-extract with this version)")
    out: dict = {"n_prompts": int(len(np.unique(groups[test_m]))), "n_harmful": int((y[test_m] == 1).sum()),
                 "n_benign": int((y[test_m] == 0).sum()), "per_check": {}, "per_depth": {}, "notes": notes}
    tested = np.where(test_m[:, None], 1.0, np.nan)
    for name, p in methods.items():
        pt = p * tested
        out["per_check"][name] = _pairs_summary(pt, y, groups, cfg.n_boot, cfg.seed)
        out["per_depth"][name] = []
        n_boot = cfg.n_boot if name in ("probe", "ngram") else 0  # CIs where the targets table reads them
        for k, d in enumerate(depths):
            col = np.full_like(pt, np.nan)
            col[:, k] = pt[:, k]
            s = _pairs_summary(col, y, groups, n_boot, cfg.seed)
            row = {"depth": int(d), "auroc": None if s is None else s["auroc"]["value"], "n": 0 if s is None else s["n"]}
            if s is not None and n_boot:
                row["auroc_ci"] = s["auroc"]
            if name == "probe":  # the check at this depth alone, at the frozen per-answer threshold
                h = test_m & (y == 1) & np.isfinite(scores[:, k])
                row["tpr_at_threshold"] = wilson(int((scores[h, k] > threshold).sum()), int(h.sum()))
            out["per_depth"][name].append(row)
    out["probe_minus_baseline_auroc"] = {}
    for name, p in methods.items():
        if name == "probe":
            continue
        rows, cols = np.nonzero(np.isfinite(p * tested) & np.isfinite(scores))
        if len(rows) and len(np.unique(y[rows])) == 2:
            out["probe_minus_baseline_auroc"][name] = paired_auroc_diff(
                scores[rows, cols], p[rows, cols], y[rows], groups[rows], n_boot=max(cfg.n_boot, 200), seed=cfg.seed)
    if "ngram" in out["probe_minus_baseline_auroc"]:
        out["probe_minus_ngram_auroc"] = out["probe_minus_baseline_auroc"]["ngram"]
    ans, coverage = answer_scores(np.where(test_m[:, None], scores, np.nan)[test_m], depths, n_tokens[test_m],
                                  schedule)
    yt = y[test_m]
    fired = ans > threshold
    out["per_answer"] = {"threshold": threshold, "schedule": schedule.to_dict(), "schedule_coverage": coverage,
                         "tpr": wilson(int(fired[yt == 1].sum()), int((yt == 1).sum())),
                         "fpr": wilson(int(fired[yt == 0].sum()), int((yt == 0).sum()))}
    src_t = np.asarray(meta["sources"][done])[test_m].astype(str)
    out["per_answer"]["fpr_by_source"] = {
        str(s): wilson(int(fired[(yt == 0) & (src_t == s)].sum()), int(((yt == 0) & (src_t == s)).sum()))
        for s in sorted(set(src_t[yt == 0].tolist()))}
    out["per_answer"]["tpr_by_source"] = {
        str(s): wilson(int(fired[(yt == 1) & (src_t == s)].sum()), int(((yt == 1) & (src_t == s)).sum()))
        for s in sorted(set(src_t[yt == 1].tolist()))}
    return out


def save_probeset(probes: ProbeSet, cfg: TrainConfig, probe: ProbeConfig, out: str | Path) -> Path:
    """Save the probe set with both configs beside it."""
    from interp.config import save_config

    path = probes.save(Path(out))
    save_config(cfg, Path(out) / "config.json")
    save_config(probe, Path(out) / "probe_config.json")
    return path
