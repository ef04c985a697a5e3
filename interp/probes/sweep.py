"""Cross-validated probing over layers and depths, with baselines on identical splits.

The unit of work is :func:`oof_scores`: out-of-fold probabilities ``[N, D]`` for one layer and method.
:func:`run_sweep` streams layers one at a time through a ``loader(layer, position) -> LayerData``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from interp import UserError
from interp.probes.calibration import (
    expected_calibration_error,
    rates_at_threshold,
    reliability_curve,
)
from interp.probes.cv import Split, grouped_folds, source_split
from interp.probes.data import LayerData
from interp.probes.fit import LinearParams, fit_diff_of_means, fit_logreg_torch, fit_sklearn
from interp.probes.metrics import summarize
from interp.probes.protocol import answer_scores, per_answer_threshold
from interp.probes.select import EVERY_STORED_DEPTH, choose_layer, control_rows

BASELINES = ("last_token", "prompt", "diffmeans", "shuffled", "ngram")


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


def _cw(cfg: ProbeConfig) -> str | None:
    return None if cfg.class_weight == "none" else cfg.class_weight


def fit_probes(X: np.ndarray, y: np.ndarray, masks: np.ndarray, cfg: ProbeConfig) -> list[LinearParams]:
    """One probe per training mask (``masks [P, M]``) on shared rows ``X [M, d]``."""
    if cfg.method == "diffmeans":
        return [fit_diff_of_means(X[m], y[m], standardize=cfg.standardize, class_weight=_cw(cfg)) for m in masks]
    if cfg.solver == "sklearn":
        return [fit_sklearn(X[m], y[m], C=cfg.C, class_weight=_cw(cfg), standardize=cfg.standardize,
                            max_iter=cfg.max_iter) for m in masks]
    params = fit_logreg_torch(X, y, masks, C=cfg.C, class_weight=_cw(cfg), standardize=cfg.standardize,
                              max_iter=cfg.max_iter)
    return [params[0, p] for p in range(masks.shape[0])]


def oof_scores(data: LayerData, split: Split, cfg: ProbeConfig, *, per_depth: bool = False,
               labels: np.ndarray | None = None) -> np.ndarray:
    """Out-of-fold probabilities ``[N, D]`` (NaN for invalid or untested pairs); ``labels`` overrides ``data.y``.

    With ``per_depth`` a separate probe is trained for each depth (on that depth's rows only).
    """
    X, _, rows, cols = data.flat()
    y = (data.y if labels is None else np.asarray(labels))[rows]
    ps = split.for_pairs(rows)
    out = np.full(data.valid.shape, np.nan)
    depth_ids = np.unique(cols) if per_depth else [None]
    masks, tests = [], []
    for k in depth_ids:
        sel = np.ones(len(rows), bool) if k is None else cols == k
        for f in range(split.n_folds):
            if (ps.test[f] & sel).any():
                masks.append(ps.train[f] & sel)
                tests.append(ps.test[f] & sel)
    for params, test in zip(fit_probes(X, y, np.array(masks), cfg), tests):
        out[rows[test], cols[test]] = 1.0 / (1.0 + np.exp(-params.logit(X[test])))
    return out


def shuffled_labels(y: np.ndarray, groups: np.ndarray, seed: int) -> np.ndarray:
    """Labels permuted across prompts (rows of one prompt keep sharing a label). The unit is (group, label), so
    a twin-pair group (one harmful and one benign prompt) contributes two units."""
    units = np.char.add(np.asarray(groups).astype(str), np.char.add("|", np.asarray(y).astype(str)))
    codes = np.unique(units, return_inverse=True)[1].reshape(-1)
    per_group = np.zeros(codes.max() + 1, np.int64)
    per_group[codes] = y
    return np.random.default_rng(seed).permutation(per_group)[codes]


def _summ(p: np.ndarray, data: LayerData, mask: np.ndarray, n_boot: int, seed: int) -> dict:
    rows, cols = np.nonzero(mask)
    return summarize(p[rows, cols], data.y[rows], data.groups[rows], n_boot=n_boot, seed=seed)


def _per_depth(p: np.ndarray, data: LayerData, n_boot: int, seed: int) -> list[dict | None]:
    out = []
    for k in range(p.shape[1]):
        m = np.zeros_like(data.valid)
        m[:, k] = np.isfinite(p[:, k])
        ok = m[:, k]
        out.append(_summ(p, data, m, n_boot, seed) if ok.any() and len(np.unique(data.y[ok])) == 2 else None)
    return out


@dataclass
class SweepConfig:
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


def make_split(data: LayerData, cfg: SweepConfig) -> Split:
    if cfg.train_sources or cfg.test_sources:
        if not (cfg.train_sources and cfg.test_sources):
            raise UserError("give both --train-sources and --test-sources")
        return source_split(data.sources, cfg.train_sources, cfg.test_sources, data.groups)
    return grouped_folds(data.y, data.groups, cfg.folds, cfg.seed)


def run_sweep(loader: Callable[[int, str | int], LayerData], layers: list[int], probe: ProbeConfig,
              cfg: SweepConfig, position: str | int = "probe", texts: np.ndarray | None = None) -> dict:
    """CV every layer with the probe and the baselines; returns a JSON-ready result dict (plus ``"_oof"``:
    ``{method: [L, N, D]}`` out-of-fold probabilities for plotting).

    ``texts [N, D]`` (:func:`interp.probes.ngram.depth_texts`) enables the n-gram baseline, fitted once on the
    same folds (it does not depend on the layer). ``res["loso"]`` is the leave-one-source-out table at the best
    layer."""
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
    split = data0 = best_data = None
    best_auc = -np.inf
    for layer in tqdm(layers, desc="layers", unit="layer"):
        data = loader(layer, position)
        if split is None:
            split, data0 = make_split(data, cfg), data
            res.update(depths=data.depths.tolist(), split={"kind": split.kind, "n_folds": split.n_folds},
                       n_examples=int(len(data.y)), n_pairs=int(data.valid.sum()))
        scores = {"probe": oof_scores(data, split, probe, per_depth=cfg.per_depth_fit)}
        if "diffmeans" in cfg.baselines:
            dm = ProbeConfig(**{**probe.__dict__, "method": "diffmeans"})
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

                ngram = np.where(data.valid, ngram_oof(texts, data.y, data.valid, split), np.nan)
            scores["ngram"] = ngram
        for m in methods:
            p = scores[m]
            oof[m].append(p.astype(np.float32))
            res["per_layer"][m].append(_summ(p, data, np.isfinite(p), cfg.n_boot, cfg.seed))
            res["per_depth"][m].append(_per_depth(p, data, cfg.n_boot if m == "probe" else 0, cfg.seed))
        auc = res["per_layer"]["probe"][-1]["auroc"]["value"]
        if auc > best_auc:  # the best layer so far (first of ties, as choose_layer): kept for leave-one-source-out
            best_auc, best_data = auc, data
    res["best_layer"] = choose_layer(layers, [s["auroc"]["value"] for s in res["per_layer"]["probe"]])
    best_i = list(layers).index(res["best_layer"])
    res["best"] = _best_layer_report(oof, best_i, data0, cfg)
    if "ngram" in methods:
        from interp.probes.metrics import paired_auroc_diff

        p, q = oof["probe"][best_i], oof["ngram"][best_i]
        rows, cols = np.nonzero(np.isfinite(p) & np.isfinite(q))
        res["best"]["probe_minus_ngram_auroc"] = paired_auroc_diff(p[rows, cols], q[rows, cols], data0.y[rows],
                                                                   data0.groups[rows], n_boot=cfg.n_boot,
                                                                   seed=cfg.seed)
    if split.kind == "grouped":
        res["loso"] = leave_one_source_out(best_data, split, probe, cfg, texts)
    res["_oof"] = {m: np.stack(v) for m, v in oof.items()}
    res["_labels"] = data0.y
    res["notes"] = sorted(set(res["notes"]))
    return res


def _shuffled_baseline(data: LayerData, split: Split, probe: ProbeConfig, cfg: SweepConfig, res: dict
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
    other.valid = other.valid & data.valid
    return oof_scores(other, split, probe)


def _prompt_baseline(loader, layer, data, split, probe, res) -> np.ndarray:
    """Prompt-only probe: the probe position at depth 0 if swept, else the last prompt token; one row per prompt,
    its score broadcast to every valid depth."""
    if 0 in data.depths.tolist():
        k = data.depths.tolist().index(0)
        X = data.X[:, k:k + 1]
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


def _best_layer_report(oof: dict, best_i: int, data: LayerData, cfg: SweepConfig) -> dict:
    """Threshold at the target FPR on held-out benign controls, rates, calibration, per-source and per-depth
    curves with CIs for every method, all at the best layer."""
    p = oof["probe"][best_i].astype(np.float64)
    rows, cols = np.nonzero(np.isfinite(p))
    probs, y, src = p[rows, cols], data.y[rows], data.sources[rows]
    control = control_rows(data.y, data.sources, cfg.control_sources) & np.isfinite(p).any(1)
    if not control.any():
        raise UserError("no benign control answers to set the threshold on (check --control-sources)")
    ans = _answer_max(p)
    calib = per_answer_threshold(ans[control], cfg.target_fpr)
    thr = calib["threshold"]
    answered = np.isfinite(ans)
    per_answer = rates_at_threshold(ans[answered], data.y[answered], thr) | {
        "n_controls": int(control.sum()), "resolved": calib["resolved"], "resolution": calib["resolution"],
        "rule": "per answer = max over stored depths; threshold at the target FPR on these out-of-fold benign "
                "answers (so the FPR is in-sample; `anydepth train` reports held-out rates)"}
    per_source = {}
    for s in np.unique(src):
        m = src == s
        per_source[str(s)] = {"n": int(m.sum()), "label_mean": float(y[m].mean()), "mean_score": float(probs[m].mean()),
                              "flagged_at_threshold": float((probs[m] > thr).mean()),
                              "flagged_at_0.5": float((probs[m] > 0.5).mean())}
    depth_ci = {m: _per_depth(v[best_i].astype(np.float64), data, cfg.n_boot, cfg.seed) for m, v in oof.items()}
    return {"target_fpr": cfg.target_fpr, "control_sources": cfg.control_sources,
            "threshold": per_answer,
            "at_0.5": rates_at_threshold(probs, y, 0.5),
            "reliability": reliability_curve(probs, y), "ece": expected_calibration_error(probs, y),
            "per_source": per_source, "per_depth": depth_ci}


def _answer_max(p: np.ndarray) -> np.ndarray:
    """Per answer: the maximum score over its scored depths (NaN when none): the guard's "any check" rule with
    a check at every stored depth (:data:`~interp.probes.select.EVERY_STORED_DEPTH`)."""
    n = p.shape[1]  # columns as depths 0..n-1: the schedule then checks every column
    return answer_scores(p, range(n), np.full(len(p), n - 1), EVERY_STORED_DEPTH)[0]


def leave_one_source_out(data: LayerData, split: Split, probe: ProbeConfig, cfg: SweepConfig,
                         texts: np.ndarray | None = None) -> dict:
    """Per source: probes trained without it, scored on it.

    Folds are the sweep's grouped folds with the held-out source's rows removed from every training part, so
    every row is scored out-of-fold by a model that saw neither its prompt (nor its twin) nor its source. AUROC compares the source's rows
    with the other class: within the source if it holds both labels, else the other sources' out-of-fold rows
    of the other label. The per-answer threshold (target FPR, answer = max over stored depths) is set on the
    other sources' benign answers only, and the source's answers are flagged at it (TPR if harmful, FPR if
    benign). With ``texts`` the n-gram baseline runs on the same folds.
    """
    from interp.probes.ngram import ngram_oof

    names = sorted(set(data.sources.tolist()))
    if len(names) < 2:
        return {"rows": [], "note": f"one source ({names[0] if names else '-'}): leave-one-source-out needs two"}
    out = []
    pooled = {"probe": np.full(data.valid.shape, np.nan)}
    if texts is not None:
        pooled["ngram"] = np.full(data.valid.shape, np.nan)
    for s in tqdm(names, desc="leave-one-source-out", unit="source"):
        in_s = data.sources == s
        # the fold structure already keeps a test prompt (and its twin) out of training, whatever its source
        train = split.train & ~in_s[None]
        bad = [f for f in range(split.n_folds) if len(np.unique(data.y[train[f] & data.valid.any(1)])) < 2]
        labels = sorted(set(data.y[in_s].tolist()))
        row = {"source": s, "labels": ["benign" if v == 0 else "harmful" for v in labels],
               "n_answers": int(in_s.sum())}
        if bad:
            row["skipped"] = "holding it out leaves one class to train on"
            out.append(row)
            continue
        lsplit = Split(train, split.test, "leave-one-source-out")
        scored = {"probe": oof_scores(data, lsplit, probe)}
        if texts is not None:
            scored["ngram"] = ngram_oof(texts, data.y, data.valid, lsplit)
        for name, p in scored.items():
            pooled[name][in_s] = p[in_s]
        if len(labels) == 2:
            cmp_rows = in_s
        else:
            cmp_rows = in_s | (~in_s & (data.y != labels[0]))
        for name, p in scored.items():
            m = np.zeros_like(data.valid)
            m[cmp_rows] = np.isfinite(p[cmp_rows])
            summ = _summ(p, data, m, cfg.n_boot, cfg.seed) if m.any() else None
            ans = _answer_max(p)
            others = ~in_s & (data.y == 0) & np.isfinite(ans)
            entry = {"auroc": None if summ is None else summ["auroc"]}
            if others.any():
                thr = per_answer_threshold(ans[others], cfg.target_fpr)["threshold"]
                rate = {}
                for lab in labels:
                    sel = in_s & (data.y == lab) & np.isfinite(ans)
                    rate["tpr" if lab == 1 else "fpr"] = float((ans[sel] > thr).mean()) if sel.any() else None
                entry |= {"threshold": thr, "n_benign_for_threshold": int(others.sum()), **rate}
            row[name] = entry
        out.append(row)
    scored_rows = [r for r in out if "probe" in r and r["probe"]["auroc"] is not None]
    worst = min(scored_rows, key=lambda r: r["probe"]["auroc"]["value"], default=None)
    per_depth = {name: [None if s is None else {"depth": int(d), "auroc": s["auroc"], "n": s["n"]}
                        for d, s in zip(data.depths, _per_depth(p, data, cfg.n_boot, cfg.seed))]
                 for name, p in pooled.items()}
    return {"rows": out, "worst": None if worst is None else worst["source"], "per_depth": per_depth,
            "rule": "per answer = max over stored depths; threshold at the target FPR on the other sources' "
                    "benign answers",
            "per_depth_rule": "every row scored by the probe trained without its source (and its prompt), pooled "
                              "over sources; AUROC per depth with a bootstrap CI over prompts"}
