"""Fit one probe per layer on a store under the held-out protocol and save a :class:`ProbeSet`.

The store's prompt groups (content groups: :mod:`interp.probes.groups`) are split three ways
(:func:`interp.probes.protocol.three_way_split`):

* **train**: grouped CV over these prompts picks the layer (unless ``layer`` is given); the saved probes are
  refitted on all of them, and on nothing else;
* **calibration**: only the threshold. Each benign calibration answer of the deployment population (the model's
  own answers, ``--calibrate-on``) is scored on exactly the checks the guard makes on it at the store's answer
  length (:mod:`interp.probes.answers`: every stride multiple, the early checks, the final check), aggregated by
  the schedule's rule, and the threshold is set so that at most ``target_fpr`` of these answers fire;
* **test**: every number reported (AUROC per check, per-answer TPR and FPR at the frozen threshold with CIs over
  prompt groups, per source, own answers first), beside the n-gram, last-token and prompt-only baselines fitted
  on the same training prompts.

The ProbeSet records the split (prompt keys, pair ids and word fingerprints per role) so that evaluations exclude
its training and calibration prompts, and the schedule (with its aggregation rule and answer length) it was
calibrated for. With ``combine_layers`` the guard's score is the mean of those layers' probe logits (a
multi-layer probe), and the threshold and the test numbers are computed on that combined score.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np

from interp import UserError
from interp.probes.baselines import baseline_scores
from interp.probes.data import LayerData, StoreSliceConfig
from interp.probes.oof import ProbeConfig
from interp.probes.probeset import ProbeSet
from interp.probes.protocol import ScheduleConfig, SplitConfig, check_schedule
from interp.probes.readout import readout_scores


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
    fixed_threshold: float | None = field(default=None, metadata={
        "help": "use this threshold (ADA's 0.5) instead of calibrating one at --target-fpr; the calibration "
                "prompts' own benign answers still report their false-alarm rate at it"})
    stack: bool = field(default=False, metadata={
        "help": "with --combine-top / --combine-layers: one logistic regression on the layers' concatenated "
                "standardised features (fitted on the training prompts) instead of the mean of per-layer probes"})
    n_boot: int = field(default=200, metadata={"help": "bootstrap resamples for the CIs stored with the probes"})
    judgments: str = field(default="", metadata={
        "help": "a content judge's folder (anydepth judge RUN --every-prefill true --out DIR), read by "
                "--drop-judged-harmless"})
    drop_judged_harmless: bool = field(default=False, metadata={
        "help": "leave out of every fit (probes, baselines, leave-one-source-out training folds) the model's own "
                "deep prefills the --judgments judge calls harmless; calibration and test answers are untouched"})
    augment: list[str] = field(default_factory=list, metadata={
        "help": "more stores (same model, template and extraction settings) whose rows are trained on and never "
                "calibrated or tested on; --store's split is the one it gets alone, and an added row whose prompt "
                "group meets a calibration or test prompt of --store is left out (counted)"})

    def validate(self) -> None:
        """Every option of ``anydepth train`` (store slice, split, schedule, layer), one line per problem."""
        StoreSliceConfig.validate(self)
        SplitConfig.validate(self)
        check_schedule(self)
        if self.layer is not None and self.layer < 0:
            raise UserError(f"--layer must be a stored layer >= 0, got {self.layer}")
        if self.fixed_threshold is not None and not 0 < self.fixed_threshold < 1:
            raise UserError(f"--fixed-threshold is a probability in (0, 1), got {self.fixed_threshold}")
        if self.n_boot < 0:
            raise UserError(f"--n-boot must be >= 0, got {self.n_boot}")
        if self.drop_judged_harmless and not self.judgments:
            raise UserError("--drop-judged-harmless true needs --judgments DIR (written by `anydepth judge RUN "
                            "--every-prefill true --out DIR`)")
        if self.stack and not (self.combine_top or self.combine_layers):
            raise UserError("--stack true stacks the layers of --combine-top K or --combine-layers L1 L2 ...; give one")
        if self.combine_top:
            if self.combine_top < 2:
                raise UserError(f"--combine-top needs 2 or more layers, got {self.combine_top} (0 turns it off)")
            if self.combine_layers or self.layer is not None:
                raise UserError("--combine-top excludes --combine-layers and --layer (it chooses the layers itself)")
            if self.calib_fraction == 0:
                raise UserError("--combine-top needs a calibration split (--calib-fraction > 0)")


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


def judged_out(cfg: TrainConfig, meta: dict, among: np.ndarray) -> np.ndarray:
    """Rows among ``among`` left out of every fit by ``--drop-judged-harmless`` (none without it): the own deep
    prefills the ``--judgments`` judge calls harmless."""
    if not cfg.drop_judged_harmless:
        return np.zeros(len(meta["y"]), bool)
    from interp.evaluate.judgments import harmless_prefills

    return harmless_prefills(meta, cfg.judgments, among)


def _judged_record(cfg: TrainConfig, dropped: np.ndarray) -> dict:
    """What ``--drop-judged-harmless`` left out, and the judge that decided (its ``judge.json``: config and model)."""
    if not cfg.drop_judged_harmless:
        return {}
    from interp.evaluate.judgments import read_judge

    return {"dropped_judged_harmless": int(dropped.sum()), "judge": read_judge(cfg.judgments)}


def _pairs_summary(p: np.ndarray, y: np.ndarray, groups: np.ndarray, n_boot: int, seed: int) -> dict | None:
    """Pooled summary of the finite pairs of ``p [N, D]``, with each pair's label from ``y [N, D]``."""
    from interp.probes.metrics import summarize

    rows, cols = np.nonzero(np.isfinite(p))
    if len(rows) == 0 or len(np.unique(y[rows, cols])) < 2:
        return None
    return summarize(p[rows, cols], y[rows, cols], groups[rows], n_boot=n_boot, seed=seed)


def _require_split(roles: np.ndarray, y: np.ndarray, cfg: TrainConfig) -> None:
    """A split too small for its roles is refused with the real cause (a role that got no prompt group)."""
    for role, frac in (("calibration", cfg.calib_fraction), ("test", cfg.test_fraction)):
        if frac > 0 and not (roles == role).any():
            n = len(np.unique(roles))
            raise UserError(f"--{'calib' if role == 'calibration' else 'test'}-fraction {frac} of the store's prompt "
                            f"groups rounds to none: the store holds too few prompt groups for a {role} split "
                            f"({n} role(s) filled); extract more prompts, or pass --"
                            f"{'calib' if role == 'calibration' else 'test'}-fraction 0 to go without (numbers are "
                            "then labelled in-sample)")


def _augment_record(roles: np.ndarray, train_only: np.ndarray, store) -> dict:
    """What ``--augment`` added to training, and what it left out for meeting a held-out prompt."""
    if not train_only.any():
        return {}
    parts = (getattr(store, "provenance", None) or {}).get("union_of", [])[1:]
    return {"augment": {"stores": parts, "trained_rows": int((train_only & (roles == "train")).sum()),
                        "left_out_rows": int((roles == "leak").sum())}}


def train_probeset(store, cfg: TrainConfig, probe: ProbeConfig, *, progress: bool = True,
                   train_only: np.ndarray | None = None) -> ProbeSet:
    """Fit ``probe`` on every selected layer of an open :class:`~interp.extract.store.ActivationStore` (see module
    doc). ``train_only`` (bool over the store's rows) marks rows that only ever train
    (:func:`~interp.probes.protocol.assign_split`)."""
    from tqdm.auto import tqdm

    from interp.config import to_dict
    from interp.extract.store import canonical_hook
    from interp.probes.answers import Deployed, calibration_rows
    from interp.probes.cv import grouped_folds
    from interp.probes.data import finished_meta, load_layer, require_finished
    from interp.probes.metrics import summarize
    from interp.probes.oof import fit_probes, oof_scores
    from interp.probes.probeset import jsonable
    from interp.probes.protocol import assign_split, describe_split
    from interp.probes.select import choose_layer

    position = int(cfg.position) if str(cfg.position).lstrip("-").isdigit() else cfg.position
    hook = canonical_hook(cfg.hook) if cfg.hook else store.hooks[0]
    cfg.validate()
    layers = cfg.resolve_layers(store)
    if cfg.layer is not None and cfg.layer not in layers:
        raise UserError(f"--layer {cfg.layer} is not among the fitted layers {layers}")
    combine = combined_layers(cfg, store, layers)
    if cfg.combine_top > len(layers):
        raise UserError(f"--combine-top {cfg.combine_top} exceeds the {len(layers)} fitted layers")
    schedule = cfg.schedule(getattr(store, "answer_length", None))
    require_finished(store, cfg.allow_partial)
    extra = (np.zeros(store.n_examples, bool) if train_only is None else np.asarray(train_only, bool))[store.done]
    meta = finished_meta(store)
    y, groups, sources, prompts = meta["y"], meta["groups"], meta["sources"], meta["prompts"]
    deployed = Deployed.of(meta, schedule.answer_length)
    own_benign = calibration_rows(y, meta["kinds"], sources, cfg.calibrate_on, cfg.control_sources)
    roles = assign_split(meta, cfg, own_benign, extra, cfg.seed)
    _require_split(roles[~extra], y[~extra], cfg)
    dropped = judged_out(cfg, meta, roles == "train")  # still training prompts in the split record
    split_roles, roles = roles, np.where(dropped, "dropped", roles)
    train_m, cal_m, test_m = (roles == r for r in ("train", "calibration", "test"))
    split = grouped_folds(y[train_m], groups[train_m], cfg.folds, cfg.seed, **_fold_context(cfg, roles, groups,
                                                                                            store.n_examples))

    params, metrics, oofs = [], [], []
    for layer in tqdm(layers, desc="layers (CV on train prompts)", unit="layer", disable=not progress):
        tr = load_layer(store, hook, layer, position, cfg.depths, pairs_only=True, select=train_m)
        p, p_end = oof_scores(tr, split, probe, end=True)
        rows, cols = np.nonzero(np.isfinite(p))
        metrics.append(summarize(p[rows, cols], tr.label_grid[rows, cols], tr.groups[rows], n_boot=cfg.n_boot,
                                 seed=cfg.seed))
        oofs.append((p, p_end))
        X, yy, r, _ = tr.flat()
        params.append(fit_probes(X, yy, np.ones((1, len(yy)), bool), probe, tr.sources[r])[0])
        del tr, X  # released before the next layer is read
    best = choose_layer(layers, [m["auroc"]["value"] for m in metrics], cfg.layer)
    bi = layers.index(best)
    if cfg.combine_top:  # the K best layers by CV on the training prompts (ties: the shallower first)
        order = np.argsort([-m["auroc"]["value"] for m in metrics], kind="stable")
        combine = sorted(int(layers[i]) for i in order[:cfg.combine_top])
    readout = combine or [int(best)]
    readout_params = ([params[layers.index(layer)] for layer in readout] if not cfg.stack else
                      _fit_stacked(store, hook, readout, position, cfg, probe, train_m))
    # all rows (calibration + test), one layer in memory at a time; baselines read the deepest readout layer
    scores, end_scores, best_data = readout_scores(store, hook, readout, position, cfg.depths, readout_params)

    calib = _calibrate(cfg, schedule, meta, deployed, roles, scores, end_scores, oofs[bi], best_data.depths)
    thr = calib["threshold"]
    test = (held_out_report(store, best_data, cfg, probe, hook=hook, position=position, meta=meta, roles=roles,
                            scores=scores, threshold=thr, schedule=schedule, end_scores=end_scores)
            if test_m.any() else None)
    # a stacked probe set holds the stacked probe's parts only (no per-layer probe beside them)
    kept = _arrays(readout, readout_params) if cfg.stack else _arrays(layers, params)
    return ProbeSet(
        **kept, hook=hook, position=position, threshold=thr, kind=probe.method,
        best_layer=int(best if best in kept["layers"] else readout[-1]),
        thresholds=_thresholds_record(cfg, schedule, calib),
        metrics=_metrics_record(cfg, metrics, readout, combine, test, cv_layers=layers)
        | _judged_record(cfg, dropped) | _augment_record(roles, extra, store),
        provenance=jsonable(store.provenance), config={"train": to_dict(cfg), "probe": to_dict(probe)},
        split=describe_split(split_roles, groups, prompts, y, sources, meta["pair_ids"]), schedule=schedule.to_dict(),
        combine=combine)


def _arrays(layers: list[int], params: list) -> dict:
    """ProbeSet's per-layer arrays from fitted probes (the scaler kept when they have one)."""
    scaled = params[0].scale is not None
    return {"layers": [int(x) for x in layers], "weights": np.stack([pp.coef.reshape(-1) for pp in params]),
            "bias": np.array([float(pp.intercept) for pp in params]),
            "mean": np.stack([pp.mean.reshape(-1) for pp in params]) if scaled else None,
            "std": np.stack([pp.scale.reshape(-1) for pp in params]) if scaled else None}


def _fit_stacked(store, hook: str, layers: list[int], position, cfg: TrainConfig, probe: ProbeConfig,
                 train_m: np.ndarray) -> list:
    """The stacked probe (:mod:`interp.probes.stack`) on the training prompts' pairs of ``layers``, standardised,
    as per-layer parts the multi-layer readout averages."""
    from interp.probes.data import load_layer
    from interp.probes.oof import fit_probes
    from interp.probes.stack import split_stacked, stack_layers, warn_if_wide

    tr = stack_layers([partial(load_layer, store, hook, layer, position, cfg.depths, pairs_only=True, select=train_m)
                       for layer in layers])
    X, yy, rows, _ = tr.flat()
    warn_if_wide(X.shape[1], len(yy), probe.C)
    fitted = fit_probes(X, yy, np.ones((1, len(yy)), bool), replace(probe, standardize=True), tr.sources[rows])[0]
    return split_stacked(fitted, len(layers))


def _thresholds_record(cfg: TrainConfig, schedule, calib: dict) -> dict:
    """``ProbeSet.thresholds``: the rule, the target and the calibration behind the threshold."""
    return {"target_fpr": cfg.target_fpr,
            "rule": f"per answer ({schedule.aggregation}): fires when the maximum over the answer's scheduled checks "
                    "of the rule's statistic reaches the threshold (float64 >=)",
            "aggregate": schedule.rule.to_dict(), "control_sources": cfg.control_sources,
            "calibrate_on": list(cfg.calibrate_on), "calibration": calib}


def _metrics_record(cfg: TrainConfig, metrics: list[dict], readout: list[int], combine: list[int],
                    test: dict | None, *, cv_layers: list[int]) -> dict:
    """``ProbeSet.metrics``: CV on the training prompts per layer, how the readout was chosen, held-out numbers."""
    rule = ("the best layer's probe" if not combine else "mean of the layers' probe logits" if not cfg.stack else
            "one logistic regression on the layers' concatenated standardised features (saved as per-layer parts "
            "whose mean logit is the stacked logit)")
    return {"cv_train": {str(layer): m for layer, m in zip(cv_layers, metrics)},
            "selected_by": "--layer" if cfg.layer is not None else "grouped-CV AUROC on the training prompts"
            + (f" (the top {cfg.combine_top} layers combined)" if cfg.combine_top else ""),
            "readout": {"layers": readout, "rule": rule, "stacked": bool(cfg.stack and combine)}, "test": test}


def _fold_context(cfg: TrainConfig, roles: np.ndarray, groups: np.ndarray, n_rows: int) -> dict[str, str]:
    """What the error says when the training prompts cannot fill the CV folds: how few of the prompt groups the
    split left for training (and how many rows were unfinished), and what to change."""
    n_train, n_all = len(np.unique(groups[roles == "train"])), len(np.unique(groups))
    unfinished = n_rows - len(groups)
    where = (f" in the training split ({n_train} of {n_all} prompt groups after --calib-fraction "
             f"{cfg.calib_fraction} and --test-fraction {cfg.test_fraction}"
             + (f"; {unfinished} unfinished rows left out" if unfinished else "") + ")")
    remedy = "lower --folds, lower --calib-fraction / --test-fraction, or extract more prompts"
    if unfinished:
        remedy += " (or finish the extraction: rerun `anydepth extract`)"
    return {"where": where, "remedy": remedy}


def _calibrate(cfg: TrainConfig, schedule, meta: dict, deployed, roles: np.ndarray, scores: np.ndarray,
               end_scores: np.ndarray, oof: tuple, depths) -> dict:
    """The per-answer threshold on the calibration prompts' own benign answers (the held-out role), or on
    the training prompts' out-of-fold scores when there is no calibration split (labelled in-sample)."""
    from interp.probes.answers import (
        answer_scores,
        calibration_rows,
        no_calibration_answers,
        require_complete_answers,
        warn_calibration,
    )
    from interp.probes.protocol import per_answer_threshold

    y, kinds, sources = meta["y"], meta["kinds"], meta["sources"]
    cal_m, train_m = roles == "calibration", roles == "train"
    population = calibration_rows(y, kinds, sources, cfg.calibrate_on, cfg.control_sources)
    if cal_m.any():
        rows, grid, end = population & cal_m, scores, end_scores
        basis = "calibration prompts (held out from training)"
    else:
        rows = population & train_m
        grid, end = np.full(scores.shape, np.nan), np.full(len(scores), np.nan)
        grid[train_m], end[train_m] = oof
        basis = "out-of-fold scores of the training prompts (no calibration split: in-sample calibration)"
    if not rows.any():
        raise no_calibration_answers(cfg.calibrate_on, kinds[(roles == "calibration") if cal_m.any() else train_m],
                                     y[cal_m if cal_m.any() else train_m])
    ans = answer_scores(grid[rows], depths, deployed.subset(rows), schedule, end[rows])
    require_complete_answers(ans.excluded, schedule.answer_length)
    calib = (per_answer_threshold(ans.score, cfg.target_fpr, meta["groups"][rows]) if cfg.fixed_threshold is None else
             _fixed(cfg, ans.score, meta, rows))
    calib |= {"basis": basis, "answers": ans.info(), "kinds": ans.by_kind(kinds[rows])}
    harmful = (y == 1) & (cal_m if cal_m.any() else train_m)
    if harmful.any():  # what the threshold catches on prompts that are not test prompts (to choose recipes by)
        got = answer_scores(grid[harmful], depths, deployed.subset(harmful), schedule, end[harmful])
        got_rates = _rates(got.score, meta, harmful, calib["threshold"], cfg.calibrate_on)
        calib["tpr_harmful"], calib["tpr_harmful_by_kind"] = got_rates["tpr"], got_rates["tpr_by_kind"]
    warn_calibration(calib, calib["answers"]["excluded_incomplete"], schedule.answer_length, cfg.target_fpr)
    return calib


def _rates(score: np.ndarray, meta: dict, rows: np.ndarray, threshold: float, calibrate_on) -> dict:
    from interp.probes.answers import rates

    return rates(score, meta["y"][rows], meta["groups"][rows], meta["sources"][rows], meta["kinds"][rows],
                 threshold, calibrate_on)


def _fixed(cfg: TrainConfig, score: np.ndarray, meta: dict, rows: np.ndarray) -> dict:
    """A threshold fixed by ``--fixed-threshold`` (not calibrated): the calibration answers' false-alarm rate at
    it is then a held-out number, reported beside it."""
    thr = float(cfg.fixed_threshold)
    return {"threshold": thr, "fixed": True, "resolved": True, "n_answers": int((~np.isnan(score)).sum()),
            "fpr_at_fixed": _rates(score, meta, rows, thr, cfg.calibrate_on)["fpr"]}


def held_out_report(store, best: LayerData, cfg: TrainConfig, probe: ProbeConfig, *, hook: str, position,
                    meta: dict, roles: np.ndarray, scores: np.ndarray, threshold: float, schedule,
                    end_scores: np.ndarray | None = None) -> dict:
    """Numbers on the test prompts only: the probe (``scores`` at the layer of ``best``) beside its baselines
    (fitted on the training prompts), per check (pooled and per depth) and per answer at the frozen threshold,
    on exactly the guard's checks, with CIs over prompt groups."""
    from interp.probes.answers import Deployed, answer_auroc, answer_scores, calibration_rows, rates
    from interp.probes.calibration import fires
    from interp.probes.metrics import paired_auroc_diff
    from interp.probes.protocol import SeenPrompts, assert_held_out
    from interp.stats import grouped_rate

    y, groups = meta["y"], meta["groups"]
    pair_y = best.label_grid  # each scored (row, depth) pair's label, at the depths the scores hold
    test_m = roles == "test"
    used = ~test_m & (roles != "leak")  # an added row left out for meeting a test prompt was never used
    seen = SeenPrompts.of(list(meta["prompts"][used]), list(meta["pair_ids"][used]))
    assert_held_out(list(meta["prompts"][test_m]), list(meta["pair_ids"][test_m]), seen)
    depths = best.depths
    valid = np.isfinite(scores)
    baselines, notes = baseline_scores(store, hook, best.layer, position, best.depths, probe, meta, roles, valid,
                                       cfg.seed)
    methods = {"probe": scores, **baselines}
    out: dict = {"n_prompts": int(len(np.unique(groups[test_m]))), "n_harmful": int((y[test_m] == 1).sum()),
                 "n_benign": int((y[test_m] == 0).sum()), "per_check": {}, "per_depth": {}, "notes": notes}
    tested = np.where(test_m[:, None], 1.0, np.nan)
    for name, p in methods.items():
        pt = p * tested
        out["per_check"][name] = _pairs_summary(pt, pair_y, groups, cfg.n_boot, cfg.seed)
        out["per_depth"][name] = []
        n_boot = cfg.n_boot if name in ("probe", "ngram") else 0  # CIs where the targets table reads them
        for k, d in enumerate(depths):
            col = np.full_like(pt, np.nan)
            col[:, k] = pt[:, k]
            s = _pairs_summary(col, pair_y, groups, n_boot, cfg.seed)
            row = {"depth": int(d), "auroc": None if s is None else s["auroc"]["value"], "n": 0 if s is None else s["n"]}
            if s is not None and n_boot:
                row["auroc_ci"] = s["auroc"]
            if name == "probe":  # the check at this depth alone, at the frozen per-answer threshold
                h = test_m & (pair_y[:, k] == 1) & np.isfinite(scores[:, k])
                row["tpr_at_threshold"] = grouped_rate(fires(scores[h, k], threshold), groups[h])
            out["per_depth"][name].append(row)
    out["probe_minus_baseline_auroc"] = {}
    for name, p in methods.items():
        if name == "probe":
            continue
        rows, cols = np.nonzero(np.isfinite(p * tested) & np.isfinite(scores))
        if len(rows) and len(np.unique(pair_y[rows, cols])) == 2:
            out["probe_minus_baseline_auroc"][name] = paired_auroc_diff(
                scores[rows, cols], p[rows, cols], pair_y[rows, cols], groups[rows], n_boot=max(cfg.n_boot, 200),
                seed=cfg.seed)
    if "ngram" in out["probe_minus_baseline_auroc"]:
        out["probe_minus_ngram_auroc"] = out["probe_minus_baseline_auroc"]["ngram"]
    deployed = Deployed.of(meta, schedule.answer_length).subset(test_m)
    ends = None if end_scores is None else end_scores[test_m]
    ans = answer_scores(scores[test_m], depths, deployed, schedule, ends)
    kinds = meta["kinds"][test_m]
    out["per_answer"] = {"schedule": schedule.to_dict(), "answers": ans.info(),
                         **rates(ans.score, y[test_m], groups[test_m], meta["sources"][test_m], kinds, threshold,
                                 cfg.calibrate_on),
                         "auroc_own_vs_harmful": answer_auroc(
                             ans.score, y[test_m], groups[test_m],
                             calibration_rows(y[test_m], kinds, meta["sources"][test_m], cfg.calibrate_on,
                                              cfg.control_sources), n_boot=cfg.n_boot, seed=cfg.seed)}
    return out


def save_probeset(probes: ProbeSet, cfg: TrainConfig, probe: ProbeConfig, out: str | Path) -> Path:
    """Save the probe set with both configs beside it."""
    from interp.config import save_config

    path = probes.save(Path(out))
    save_config(cfg, Path(out) / "config.json")
    save_config(probe, Path(out) / "probe_config.json")
    return path
