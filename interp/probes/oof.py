"""One probe configuration fitted on folds: :class:`ProbeConfig`, :func:`fit_probes` (many training masks at
once) and :func:`oof_scores` (out-of-fold probabilities of every (row, depth) pair, and of each answer's end)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from interp import UserError
from interp.probes.answers import row_kinds
from interp.probes.calibration import sigmoid
from interp.probes.cv import Split
from interp.probes.data import LayerData
from interp.probes.fit import LinearParams, fit_diff_of_means, fit_logreg_torch, fit_sklearn


@dataclass
class ProbeConfig:
    """How one probe is fitted."""

    method: str = field(default="logreg", metadata={"help": "logreg or diffmeans",
                                                    "choices": ["logreg", "diffmeans"]})
    solver: str = field(default="torch", metadata={"help": "logreg solver: batched torch L-BFGS or sklearn lbfgs",
                                                   "choices": ["torch", "sklearn"]})
    C: float = field(default=1.0, metadata={"help": "inverse L2 strength (sklearn's C)"})
    class_weight: str = field(default="balanced", metadata={"help": "balanced or none",
                                                            "choices": ["balanced", "none"]})
    standardize: bool = field(default=False, metadata={"help": "standardise features per training set"})
    max_iter: int = field(default=1000, metadata={"help": "solver iteration limit"})
    balance_sources: bool = field(default=False, metadata={
        "help": "logreg: each source of a class carries the same total weight (a large source cannot set a class)"})
    hard_negative_weight: float = field(default=1.0, metadata={
        "help": "logreg: weight of a hard negative (a benign forced-opener answer or an own refusal to a harmful "
                "prompt) relative to another row of its source share; the benign class's total is unchanged"})


def _cw(cfg: ProbeConfig) -> str | None:
    return None if cfg.class_weight == "none" else cfg.class_weight


HARD_NEGATIVE_KINDS = ("prefill", "refusal")  # benign rows that share a harmful row's surface form


def check_hard_negative_weight(w: float) -> float:
    """``w`` if it is a finite positive weight, else a one-line error."""
    if not (np.isfinite(w) and w > 0):
        raise UserError(f"--hard-negative-weight must be a positive number, got {w}")
    return w


def hard_negative_boost(y: np.ndarray, sources: np.ndarray | None, cfg: ProbeConfig) -> np.ndarray | None:
    """Each row's weight multiplier under ``cfg.hard_negative_weight``: that weight on benign rows of the
    :data:`HARD_NEGATIVE_KINDS` (read off their sources), 1 elsewhere; None when the weight is 1."""
    w = check_hard_negative_weight(cfg.hard_negative_weight)
    if w == 1.0:
        return None
    if cfg.method != "logreg":
        raise UserError("--hard-negative-weight weights the logistic regression's rows; it does not apply to "
                        "diffmeans")
    if sources is None:
        raise UserError("--hard-negative-weight needs each row's source")
    hard = np.isin(row_kinds(np.asarray(sources).astype(str)), HARD_NEGATIVE_KINDS) & (np.asarray(y) == 0)
    return np.where(hard, w, 1.0)


def fit_probes(X: np.ndarray, y: np.ndarray, masks: np.ndarray, cfg: ProbeConfig,
               sources: np.ndarray | None = None) -> list[LinearParams]:
    """One probe per training mask (``masks [P, M]``) on shared rows ``X [M, d]``; ``sources [M]`` (each row's
    source) is needed with ``cfg.balance_sources``."""
    if cfg.balance_sources and cfg.method != "logreg":
        raise UserError("--balance-sources weights the logistic regression's rows; it does not apply to diffmeans")
    if cfg.balance_sources and sources is None:
        raise UserError("--balance-sources needs each row's source")
    src = np.asarray(sources) if cfg.balance_sources else None
    boost = hard_negative_boost(y, sources, cfg)
    if cfg.method == "diffmeans":
        return [fit_diff_of_means(X[m], y[m], standardize=cfg.standardize, class_weight=_cw(cfg)) for m in masks]
    if cfg.solver == "sklearn":
        return [fit_sklearn(X[m], y[m], C=cfg.C, class_weight=_cw(cfg), standardize=cfg.standardize,
                            max_iter=cfg.max_iter, sources=None if src is None else src[m],
                            boost=None if boost is None else boost[m]) for m in masks]
    params = fit_logreg_torch(X, y, masks, C=cfg.C, class_weight=_cw(cfg), standardize=cfg.standardize,
                              max_iter=cfg.max_iter, sources=src, boost=boost)
    return [params[0, p] for p in range(masks.shape[0])]


def oof_scores(data: LayerData, split: Split, cfg: ProbeConfig, *, per_depth: bool = False,
               labels: np.ndarray | None = None, end: bool = False):
    """Out-of-fold probabilities ``[N, D]`` (NaN for invalid or untested pairs), fitted on each pair's label
    (:attr:`LayerData.label_grid`); ``labels [N]`` (row labels, e.g. shuffled) overrides them.

    With ``per_depth`` a separate probe is trained for each depth (on that depth's rows only). With ``end``
    returns ``(scores, end_scores [N])``: each answer's end slot (``data.X_end``, its final check) scored by the
    probe of the fold that tests the answer, never trained on (pooled fits only).
    """
    X, _, rows, cols = data.flat()
    y = data.label_grid[rows, cols] if labels is None else np.asarray(labels)[rows]
    ps = split.for_pairs(rows)
    out = np.full(data.valid.shape, np.nan)
    depth_ids = np.unique(cols) if per_depth else [None]
    masks, tests, folds = [], [], []
    for k in depth_ids:
        sel = np.ones(len(rows), bool) if k is None else cols == k
        for f in range(split.n_folds):
            if (ps.test[f] & sel).any():
                masks.append(ps.train[f] & sel)
                tests.append(ps.test[f] & sel)
                folds.append(f)
    fitted = fit_probes(X, y, np.array(masks), cfg, data.sources[rows])
    for params, test in zip(fitted, tests):
        out[rows[test], cols[test]] = probabilities(params, X, np.nonzero(test)[0])
    if not end:
        return out
    if per_depth:
        raise UserError("end-of-answer scores need one probe over all depths (not --per-depth-fit)")
    ends = np.full(len(data.y), np.nan)
    if data.X_end is not None:
        for params, f in zip(fitted, folds):
            m = split.test[f]
            if m.any():
                Xe = np.ascontiguousarray(data.X_end[m], np.float32)
                ends[m] = sigmoid(params.logit(Xe))
    return out, ends


def probabilities(params: LinearParams, X: np.ndarray, idx: np.ndarray, chunk: int = 1 << 14) -> np.ndarray:
    """``sigmoid(logit)`` of rows ``idx`` of ``X``, ``chunk`` rows at a time (a fold's test rows of a paper-scale
    layer are never copied whole, in float64)."""
    out = np.empty(len(idx))
    for start in range(0, len(idx), chunk):
        part = idx[start:start + chunk]
        out[start:start + len(part)] = sigmoid(params.logit(X[part]))
    return out


def shuffled_labels(y: np.ndarray, groups: np.ndarray, seed: int) -> np.ndarray:
    """Labels permuted across prompts (rows of one prompt keep sharing a label). The unit is (group, label), so
    a twin-pair group (one harmful and one benign prompt) contributes two units."""
    units = np.char.add(np.asarray(groups).astype(str), np.char.add("|", np.asarray(y).astype(str)))
    codes = np.unique(units, return_inverse=True)[1].reshape(-1)
    per_group = np.zeros(codes.max() + 1, np.int64)
    per_group[codes] = y
    return np.random.default_rng(seed).permutation(per_group)[codes]


