"""Leave one source out: how the probe (and the n-gram baseline beside it) transfers to a source it never saw.

For each source s, the sweep's grouped folds are kept and s's rows leave every training part: fold model
``M_f`` is trained on fold f's training prompts minus s, and scores the rows of fold f (so every row is scored by
a model that saw neither its prompt, nor its twin, nor its source). The AUROC of s compares s's rows with the
other class (within s when it holds both labels, else the other sources' rows of the other label) **only over
pairs scored by the same fold model** (:func:`interp.probes.metrics.auroc_within`), so no number compares two
models' scales. The n-gram classifier runs on the same folds and text; the paired difference and every interval
resample prompt groups, with one set of bootstrap weights shared by all sources, so the macro mean over sources
gets an interval too. Per-answer rates use the guard's checks (:mod:`interp.probes.answers`) at a threshold set
on the other sources' own benign answers.

Pooling every source's scores into one AUROC mixes the fold models of different held-out sources; that figure is
kept only as ``pooled_calibration_diagnostic`` (how far one threshold fits every source), never as a ranking
number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from interp import UserError
from interp.probes.answers import CALIBRATION_KINDS, Deployed, answer_scores, source_order
from interp.probes.cv import Split
from interp.probes.data import LayerData
from interp.probes.metrics import auroc_within
from interp.probes.oof import oof_scores
from interp.stats import bootstrap_weights, grouped_rate


@dataclass
class AnswerInfo:
    """What per-answer numbers need beside the activations: each answer as deployed, its kind, and the text at its
    end (for the n-gram baseline's final check)."""

    deployed: Deployed
    kinds: np.ndarray
    end_texts: np.ndarray | None = None


def _ci(value: float, reps: np.ndarray, alpha: float = 0.05) -> dict:
    reps = reps[np.isfinite(reps)]
    lo, hi = (np.quantile(reps, [alpha / 2, 1 - alpha / 2]) if len(reps) else (np.nan, np.nan))
    return {"value": float(value), "lo": float(lo), "hi": float(hi)}


def _fold_of(split: Split) -> np.ndarray:
    """The fold that tests each row (-1 if none)."""
    tested = split.test.any(0)
    return np.where(tested, np.argmax(split.test, axis=0), -1)


def _within(p: np.ndarray, y: np.ndarray, pairs: np.ndarray, fold: np.ndarray, W: np.ndarray,
            col: int | None = None) -> tuple[float, np.ndarray, int]:
    """Within-fold AUROC of the finite (row, depth) pairs of mask ``pairs [N, D]`` (one depth column with
    ``col``), each pair labelled by ``y [N, D]``: value, bootstrap replicates, number of pairs."""
    m = pairs & np.isfinite(p)
    if col is not None:
        m = m & (np.arange(p.shape[1]) == col)[None]
    rows, cols = np.nonzero(m)
    if len(rows) == 0 or len(np.unique(y[rows, cols])) < 2:
        return float("nan"), np.full(len(W), np.nan), 0
    s, yy, blocks = p[rows, cols], y[rows, cols], fold[rows]
    return float(auroc_within(s, yy, blocks)), auroc_within(s, yy, blocks, W[:, rows]), int(len(rows))


def _rates(score: np.ndarray, data: LayerData, in_s: np.ndarray, kinds: np.ndarray, target_fpr: float,
           calibrate_on) -> dict:
    """Per-answer rate of the held-out source at a threshold set on the other sources' own benign answers."""
    from interp.probes.calibration import fires
    from interp.probes.protocol import per_answer_threshold

    others = ~in_s & (data.y == 0) & np.isin(kinds, list(calibrate_on)) & ~np.isnan(score)
    if not others.any():
        return {"rates": f"no benign {'/'.join(calibrate_on)} answers outside this source to set a threshold on"}
    thr = per_answer_threshold(score[others], target_fpr)["threshold"]
    out = {"threshold": thr, "n_benign_for_threshold": int(others.sum())}
    for lab, key in ((1, "tpr"), (0, "fpr")):
        sel = in_s & (data.y == lab) & ~np.isnan(score)
        if (in_s & (data.y == lab)).any():
            out[key] = grouped_rate(fires(score[sel], thr), data.groups[sel])
            out[key]["excluded"] = int((in_s & (data.y == lab) & np.isnan(score)).sum())
    return out


def leave_one_source_out(data: LayerData, split: Split, probe, cfg, texts: np.ndarray | None = None,
                         answers: AnswerInfo | None = None) -> dict:
    """Per source: probe and n-gram trained without it (see the module doc); ``cfg`` is the sweep's config
    (``n_boot``, ``seed``, ``target_fpr``, ``schedule``, ``calibrate_on``)."""
    kinds = answers.kinds if answers is not None else np.array(["dataset"] * len(data.y))
    names = source_order(data.sources, kinds)
    if len(names) < 2:
        return {"rows": [], "note": f"one source ({names[0] if names else '-'}): leave-one-source-out needs two"}
    ctx = _Context(data, split, probe, cfg, texts, answers, kinds, _fold_of(split),
                   bootstrap_weights(data.groups, cfg.n_boot, cfg.seed))
    out, reps, per_depth = [], {}, {}
    pooled = {name: np.full(data.valid.shape, np.nan) for name in (("probe", "ngram") if texts is not None
                                                                    else ("probe",))}
    for s in tqdm(names, desc="leave-one-source-out", unit="source"):
        out.append(_held_out_source(ctx, s, reps, per_depth, pooled))
    return {"rows": out, **_summaries(out, reps, per_depth), "pooled_calibration_diagnostic":
            _pooled(pooled, data, cfg),
            "rule": "AUROC over pairs scored by the same fold model (trained without the source and the row's "
                    "prompt); per-answer rates on the guard's checks at a threshold set at the target FPR on the "
                    f"other sources' {'/'.join(ctx.calibrate_on)} benign answers; 95% CIs resample prompt groups"}


@dataclass
class _Context:
    """What every held-out source's computation shares."""

    data: LayerData
    split: Split
    probe: object
    cfg: object
    texts: np.ndarray | None
    answers: AnswerInfo | None
    kinds: np.ndarray
    fold: np.ndarray  # the fold that tests each row
    W: np.ndarray  # [B, N] bootstrap weights, one set for every source

    @property
    def calibrate_on(self):
        return getattr(self.cfg, "calibrate_on", None) or CALIBRATION_KINDS


def _held_out_source(ctx: _Context, s: str, reps: dict, per_depth: dict, pooled: dict) -> dict:
    """The row of one held-out source; its bootstrap replicates go to ``reps``, its per-depth AUROCs to
    ``per_depth`` and its out-of-fold scores to ``pooled``."""
    from interp.probes.ngram import ngram_oof

    data = ctx.data
    in_s = data.sources == s
    train = ctx.split.train & ~in_s[None]
    # the labels of its pairs (an insertion source holds both), else of its answers when none is valid
    labels = sorted(set(data.label_grid[in_s][data.valid[in_s]].tolist()) or set(data.y[in_s].tolist()))
    row = {"source": s, "kind": str(ctx.kinds[in_s][0]), "labels": ["benign" if v == 0 else "harmful" for v in labels],
           "n_answers": int(in_s.sum()), "n_prompt_groups": int(len(np.unique(data.groups[in_s])))}
    if any(len(np.unique(data.y[train[f] & data.valid.any(1)])) < 2 for f in range(ctx.split.n_folds)):
        return row | {"skipped": "holding it out leaves one class to train on"}
    lsplit = Split(train, ctx.split.test, "leave-one-source-out")
    scored = {"probe": oof_scores(data, lsplit, ctx.probe, end=True)}
    if ctx.texts is not None:
        end_texts = None if ctx.answers is None else ctx.answers.end_texts
        got = ngram_oof(ctx.texts, data.label_grid, data.valid, lsplit, end_texts=end_texts, progress=False)
        scored["ngram"] = got if isinstance(got, tuple) else (got, np.full(len(data.y), np.nan))
    # the held-out source's pairs, and with one label there the other sources' pairs of the other label
    cmp = in_s[:, None] if len(labels) == 2 else in_s[:, None] | (~in_s[:, None] & (data.label_grid != labels[0]))
    for name, (p, p_end) in scored.items():
        pooled[name][in_s] = p[in_s]
        value, r, n_pairs = _within(p, data.label_grid, cmp, ctx.fold, ctx.W)
        reps[(s, name)] = r
        row[name] = {"auroc": None if n_pairs == 0 else _ci(value, r), "n_pairs": n_pairs}
        for k, d in enumerate(data.depths):
            v, rk, n = _within(p, data.label_grid, cmp, ctx.fold, ctx.W, col=k)
            if n:  # counted: the held-out source's own rows at this depth (each row is in one source)
                own = int((in_s & np.isfinite(p[:, k])).sum())
                per_depth.setdefault(name, {}).setdefault(int(d), {})[s] = (v, rk, own)
        row[name] |= _answer_rates(ctx, p, p_end, in_s)
    pv, nv = row["probe"]["auroc"], (row.get("ngram") or {}).get("auroc")
    if pv and nv:
        d = _ci(pv["value"] - nv["value"], reps[(s, "probe")] - reps[(s, "ngram")])
        row["probe_minus_ngram"] = d | {"beats": bool(d["lo"] > 0)}
    return row


def _answer_rates(ctx: _Context, p: np.ndarray, p_end: np.ndarray, in_s: np.ndarray) -> dict:
    """The held-out source's per-answer rate on the guard's checks (nothing without answer information)."""
    schedule = getattr(ctx.cfg, "schedule", None)
    if ctx.answers is None or schedule is None:
        return {}
    try:
        ans = answer_scores(p, ctx.data.depths, ctx.answers.deployed, schedule,
                            p_end if np.isfinite(p_end).any() else None)
    except UserError as err:  # a check the store cannot score: no rate, never a silent one
        return {"rates": f"not computed: {err}"}
    return _rates(ans.score, ctx.data, in_s, ctx.kinds, ctx.cfg.target_fpr, ctx.calibrate_on)


def _nanmean(stack: np.ndarray) -> np.ndarray:
    """Mean over sources per bootstrap replicate, ignoring sources a replicate left without a class (NaN)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a replicate where every source is NaN stays NaN
        return np.nanmean(stack, axis=0) if stack.size else np.array([])


def _summaries(rows: list[dict], reps: dict, per_depth: dict) -> dict:
    """Macro mean over sources and the worst source, overall and per depth, for each method."""
    out: dict = {"macro": {}, "worst": None, "worst_by_method": {}, "per_depth": {}}
    for name in ("probe", "ngram"):
        got = [(r["source"], r[name]["auroc"]) for r in rows if r.get(name) and r[name].get("auroc")]
        if not got:
            continue
        stack = np.stack([reps[(s, name)] for s, _ in got])
        macro_reps = _nanmean(stack)
        out["macro"][name] = _ci(float(np.mean([a["value"] for _, a in got])), macro_reps) | {"n_sources": len(got)}
        worst = min(got, key=lambda t: t[1]["value"])
        out["worst_by_method"][name] = {"source": worst[0], **worst[1]}
        if name == "probe":
            out["worst"] = worst[0]
        out["per_depth"][name] = []
        for d in sorted(per_depth.get(name, {})):
            cell = per_depth[name][d]
            vals = [v for v, _, _ in cell.values() if np.isfinite(v)]
            if not vals:
                continue
            m_reps = _nanmean(np.stack([r for _, r, _ in cell.values()]))
            w = min(cell, key=lambda s: cell[s][0] if np.isfinite(cell[s][0]) else np.inf)
            out["per_depth"][name].append({"depth": d, "macro": _ci(float(np.mean(vals)), m_reps),
                                           "worst": {"source": w, "value": cell[w][0]}, "n_sources": len(vals),
                                           "n_rows": int(sum(n for _, _, n in cell.values()))})
    return out


def _pooled(pooled: dict, data: LayerData, cfg) -> dict:
    """Every row scored by its source's held-out fold models, pooled per depth: a calibration diagnostic (one
    scale across sources, as one threshold needs), not a ranking number."""
    from interp.probes.metrics import summarize

    out = {}
    for name, p in pooled.items():
        out[name] = []
        for k, d in enumerate(data.depths):
            ok = np.isfinite(p[:, k])
            if ok.any() and len(np.unique(data.label_grid[ok, k])) == 2:
                s = summarize(p[ok, k], data.label_grid[ok, k], data.groups[ok], n_boot=cfg.n_boot, seed=cfg.seed,
                              fprs=())
                out[name].append({"depth": int(d), "auroc": s["auroc"], "n": s["n"]})
    return out
