"""Is the Safety Token special? One probe per read position of one store, every position on the same folds.

Positions (:func:`position_names`): the header's probe token (``header``), each other header token
(``header[k]``), the mean over the header (``header_mean``), the last generated token, the last template token
of the prompt (``prompt``), and in a store extracted with ``--controls true`` the control spans injected like the
header (``user_header``, ``newlines``, ``random``), the mean over the response so far and the last instruction
token (``t_inst``). The n-gram text classifier runs on the same folds beside them.

Per layer and position: out-of-fold AUROC pooled and per depth (grouped folds, CIs over prompt groups), the paired
difference header − position on the pairs both score, leave-one-source-out (macro, worst source) and the
prompt-controlled contrasts of :mod:`interp.probes.contrasts`. A verdict line per layer says which positions the
header beats, ties and loses to (95% CI of the pooled difference).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from interp import UserError
from interp.probes.oof import ProbeConfig
from interp.probes.position_names import HEADER, NGRAM, is_control, position_names, store_position
from interp.results import Result

__all__ = ["PositionsConfig", "PositionsResult", "compare_positions", "overall_verdict", "verdict_lines"]

@dataclass
class PositionsConfig:
    """What ``anydepth positions`` compares."""

    store: str | None = field(default=None, metadata={
        "help": "activation store (extract with --positions span --controls true for every position)"})
    hook: str = field(default="resid_post", metadata={"help": "hook to read"})
    layers: str = field(default="all", metadata={"help": "all or a list of the store's layers, e.g. 12,16"})
    positions: list[str] = field(default_factory=list, metadata={
        "help": "positions to compare (default: every one the store holds)"})
    folds: int = field(default=5, metadata={"help": "grouped CV folds (prompt groups kept together)"})
    seed: int = field(default=0, metadata={"help": "fold and bootstrap seed"})
    n_boot: int = field(default=1000, metadata={"help": "bootstrap replicates for every CI"})
    loso: bool = field(default=True, metadata={"help": "leave-one-source-out per position (not per header token)"})
    out: str | None = field(default=None, metadata={"help": "output folder (positions.json, .md, figure)"})

    def validate(self) -> None:
        if self.folds < 2:
            raise UserError("--folds must be at least 2")
        if self.n_boot < 0:
            raise UserError("--n-boot must be >= 0")


@dataclass
class PositionRow(Result):
    """One (layer, position): ``{value, lo, hi}`` summaries; ``vs_header`` is header − this position."""

    kind = "position"
    layer: int
    position: str
    auroc: dict | None
    per_depth: list[dict | None]
    vs_header: dict | None
    vs_header_per_depth: list[dict | None]
    loso: dict | None
    contrasts: dict[str, dict]


@dataclass
class PositionsResult(Result):
    """Every (layer, position) row of one store and its verdict lines (module doc)."""

    kind = "positions"
    rows: list[PositionRow]
    verdicts: list[str]
    layers: list[int]
    depths: list[int]
    hook: str = ""
    store: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def row(self, position: str, layer: int | None = None) -> PositionRow:
        layer = self.layers[0] if layer is None else layer
        return next(r for r in self.rows if r.position == position and r.layer == layer)

    def summary(self) -> str:
        from interp.probes.tables import positions_table

        return "\n".join([*positions_table(self), "", *self.verdicts, *(f"- {n}" for n in self.notes)])

    def save(self, out: str | Path) -> Path:
        """``positions.json``, ``positions.md`` and the figure ``positions.png`` / ``.svg`` into folder ``out``."""
        from interp.probes.plots import plot_positions

        out = Path(out)
        path = super().save(out / "positions.json")
        (out / "positions.md").write_text(self.summary() + "\n")
        plot_positions(self, out / "positions")
        return path


def compare_positions(store, cfg: PositionsConfig | None = None, probe: ProbeConfig | None = None, *,
                      progress: bool = True) -> PositionsResult:
    """Every position of ``cfg.positions`` (default all) at every layer of ``cfg.layers`` on an open store."""
    from tqdm.auto import tqdm

    from interp.config import to_dict
    from interp.probes.cv import grouped_folds
    from interp.probes.data import examples_meta
    from interp.probes.probeset import jsonable
    from interp.probes.stores import store_texts
    from interp.stats import bootstrap_weights

    cfg, probe = cfg or PositionsConfig(), probe or ProbeConfig()
    cfg.validate()
    names, layers = _check(store, cfg)
    meta = examples_meta(store)
    done = meta["done"]
    ctx = _Ctx(store, cfg, probe, meta["y"][done], meta["groups"][done], meta["prompts"][done], meta["kinds"][done],
               meta["valid"][done],
               grouped_folds(meta["y"][done], meta["groups"][done], cfg.folds, cfg.seed),
               bootstrap_weights(meta["groups"][done], cfg.n_boot, cfg.seed), store_texts(store, meta=meta))
    rows, verdicts = [], []
    bar = tqdm(total=len(layers) * len(names), desc="positions", unit="fit", disable=not progress)
    for layer in layers:
        got = _layer(ctx, layer, names, bar, first=layer == layers[0])
        rows += got
        verdicts += verdict_lines(got, layer)
    bar.close()
    model = str((store.provenance or {}).get("model_id") or "this model")
    verdicts.insert(0, overall_verdict(rows, layers, model))
    return PositionsResult(rows=rows, verdicts=verdicts, layers=layers, depths=[int(d) for d in store.depths],
                           hook=cfg.hook, store=str(getattr(store, "path", "")),
                           config={"positions": to_dict(cfg), "probe": to_dict(probe)},
                           provenance=jsonable(store.provenance), notes=_notes(store))


def _notes(store) -> list[str]:
    out = ["out-of-fold AUROC on grouped folds (no prompt is scored by a probe trained on it); 95% CIs resample "
           "prompt groups; header − position is paired on the (row, depth) pairs both score"]
    if not store.study_positions:
        out.append("this store holds no control spans: extract it with --controls true for the injected controls, "
                   "the response mean and the last instruction token")
    return out


def _check(store, cfg: PositionsConfig) -> tuple[list[str], list[int]]:
    from interp.extract.store import canonical_hook

    if canonical_hook(cfg.hook) not in store.hooks:
        raise UserError(f"hook {canonical_hook(cfg.hook)} not in the store (it holds {list(store.hooks)})")
    if getattr(store, "has_depth_labels", False):
        raise UserError(f"{store.path}: the position study reads one label per answer, and this store holds insertion "
                        "rows (labelled per depth); extract the positions spec's corpus for it")
    held = position_names(store)
    names = list(cfg.positions) or held
    missing = [n for n in names if n not in held]
    if missing:
        raise UserError(f"position {missing[0]!r} is not in this store; it holds {', '.join(held)}")
    if HEADER not in names:
        names = [HEADER, *names]
    if cfg.layers == "all":
        return names, [int(x) for x in store.layers]
    try:
        layers = [int(x) for x in str(cfg.layers).split(",") if x.strip()]
    except ValueError as err:
        raise UserError(f"--layers {cfg.layers!r}: give all or a comma list of layers") from err
    bad = [x for x in layers if x not in [int(v) for v in store.layers]]
    if bad or not layers:
        raise UserError(f"--layers {cfg.layers!r}: the store holds layers {[int(v) for v in store.layers]}")
    return names, layers


@dataclass
class _Ctx:
    store: Any
    cfg: PositionsConfig
    probe: ProbeConfig
    y: np.ndarray
    groups: np.ndarray
    prompts: np.ndarray
    kinds: np.ndarray
    valid: np.ndarray
    split: Any
    W: np.ndarray
    texts: np.ndarray | None
    # the text baseline does not depend on the layer: fitted at the first layer, reused at the others
    ngram: np.ndarray | None = None
    ngram_loso: dict | None = None


def _scores(ctx: _Ctx, layer: int, name: str, with_text: bool) -> tuple[np.ndarray, dict | None]:
    """Out-of-fold scores ``[N, D]`` of one position (NaN where not scored) and its leave-one-source-out by method
    (``probe``, and with ``with_text`` the n-gram's on the same folds)."""
    from interp.probes.data import load_layer
    from interp.probes.oof import oof_scores

    data = load_layer(ctx.store, ctx.cfg.hook, layer, store_position(name), pairs_only=True)
    if name == "response_mean":  # empty before the first response token
        data = data.restrict(np.broadcast_to(np.asarray(data.depths) > 0, data.valid.shape))
    p = oof_scores(data, ctx.split, ctx.probe)
    loso = _loso(ctx, data, with_text) if ctx.cfg.loso and not name.startswith("header[") else None
    return p, loso


def _loso(ctx: _Ctx, data, with_text: bool) -> dict:
    from interp.probes.loso import leave_one_source_out
    from interp.probes.sweep import SweepPlan

    plan = SweepPlan(folds=ctx.cfg.folds, seed=ctx.cfg.seed, n_boot=ctx.cfg.n_boot)
    got = leave_one_source_out(data, ctx.split, ctx.probe, plan, ctx.texts if with_text else None)
    if "note" in got:
        return {"note": got["note"]}
    out = {m: {"macro": got["macro"].get(m), "worst": got["worst_by_method"].get(m)} for m in ("probe", NGRAM)
           if got["macro"].get(m)}
    return out


def _layer(ctx: _Ctx, layer: int, names: list[str], bar, first: bool) -> list[PositionRow]:
    from interp.probes.contrasts import prompt_controlled
    from interp.probes.ngram import ngram_oof

    scores, loso = {}, {}
    for name in names:
        scores[name], got = _scores(ctx, layer, name, with_text=first and name == HEADER)
        loso[name] = (got or {}).get("probe")
        if first and name == HEADER:
            ctx.ngram_loso = (got or {}).get(NGRAM)
        bar.update(1)
    if ctx.texts is not None:
        if first:
            ctx.ngram = ngram_oof(ctx.texts, ctx.y, ctx.valid, ctx.split, progress=False)
        scores[NGRAM], loso[NGRAM] = ctx.ngram, ctx.ngram_loso
    head = scores[HEADER]
    rows = []
    for name, p in scores.items():
        rows.append(PositionRow(layer=layer, position=name, auroc=_auroc(ctx, p), per_depth=_per_depth(ctx, p),
                                vs_header=None if name == HEADER else _diff(ctx, head, p),
                                vs_header_per_depth=[] if name == HEADER else
                                [_diff(ctx, head[:, [k]], p[:, [k]]) for k in range(p.shape[1])],
                                loso=loso.get(name),
                                contrasts=prompt_controlled(p, ctx.y, ctx.prompts, ctx.kinds, ctx.W,
                                                            ctx.store.depths)))
    return rows


def _auroc(ctx: _Ctx, p: np.ndarray) -> dict | None:
    from interp.probes.metrics import summarize

    r, k = np.nonzero(np.isfinite(p))
    if len(np.unique(ctx.y[r])) < 2:
        return None
    s = summarize(p[r, k], ctx.y[r], ctx.groups[r], n_boot=ctx.cfg.n_boot, seed=ctx.cfg.seed, fprs=())
    return {**s["auroc"], "n": s["n"], "n_prompts": s["n_prompts"]}


def _per_depth(ctx: _Ctx, p: np.ndarray) -> list[dict | None]:
    return [_auroc(ctx, p[:, [k]]) for k in range(p.shape[1])]


def _diff(ctx: _Ctx, a: np.ndarray, b: np.ndarray) -> dict | None:
    """AUROC(a) − AUROC(b) on the pairs both score (paired bootstrap over prompt groups)."""
    from interp.probes.metrics import paired_auroc_diff

    r, k = np.nonzero(np.isfinite(a) & np.isfinite(b))
    if len(np.unique(ctx.y[r])) < 2:
        return None
    d = paired_auroc_diff(a[r, k], b[r, k], ctx.y[r], ctx.groups[r], n_boot=ctx.cfg.n_boot, seed=ctx.cfg.seed)
    return {**d, "loses": bool(d["hi"] < 0), "n": int(len(r))}


def overall_verdict(rows: list[PositionRow], layers: list[int], model: str) -> str:
    """One line for the model: the positions the header beats at every layer, those it loses to at some layer,
    and the rest (tied somewhere, never lost)."""
    calls: dict[str, dict[int, str]] = {}
    for r in rows:
        if r.vs_header is not None and is_control(r.position):
            d = r.vs_header
            calls.setdefault(r.position, {})[r.layer] = "beats" if d["beats"] else "loses" if d["loses"] else "ties"
    beaten = [p for p, c in calls.items() if all(v == "beats" for v in c.values())]
    lost = [f"{p} (layer {', '.join(str(k) for k, v in c.items() if v == 'loses')})" for p, c in calls.items()
            if "loses" in c.values()]
    mixed = [p for p, c in calls.items() if p not in beaten and "loses" not in c.values()]
    return (f"{model}, layers {', '.join(str(x) for x in layers)}: the header (probe token) beats "
            f"{', '.join(beaten) or 'no position'} at every layer; loses to {', '.join(lost) or 'none'}; ties "
            f"{', '.join(mixed) or 'none'} at some layer (pooled out-of-fold AUROC, header − position, 95% CI).")


def verdict_lines(rows: list[PositionRow], layer: int) -> list[str]:
    """Which positions the header beats, ties and loses to at ``layer`` (pooled AUROC difference, 95% CI), and
    its prompt-controlled AUROCs beside the best prompt-only position's."""
    calls: dict[str, list[str]] = {"beats": [], "ties": [], "loses to": []}
    for r in rows:
        if r.layer != layer or r.vs_header is None or not is_control(r.position):
            continue
        d = r.vs_header
        key = "beats" if d["beats"] else "loses to" if d["loses"] else "ties"
        calls[key].append(f"{r.position} ({d['value']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}])")
    parts = [f"{k} {', '.join(v) if v else 'none'}" for k, v in calls.items()]
    lines = [f"Layer {layer}: the header " + "; ".join(parts) + "."]
    head = next(r for r in rows if r.layer == layer and r.position == HEADER)
    for name, c in head.contrasts.items():
        if "value" not in c:
            lines.append(f"Layer {layer}, within {name} prompts: not measured ({c.get('note', 'no pairs')}).")
            continue
        ci = f" [{c['lo']:.3f}, {c['hi']:.3f}]" if "lo" in c else ""
        lines.append(f"Layer {layer}, within {name} prompts ({c['n_prompts']} prompts): header AUROC "
                     f"{c['value']:.3f}{ci} (a prompt-only feature scores 0.5).")
    return lines
