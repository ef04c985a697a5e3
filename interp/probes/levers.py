"""Recipe levers measured one at a time against the base recipe, on one store, under the held-out protocol.

A lever is a named change of the probe recipe (:data:`LEVERS`): the readout hook, source-balanced weights, a
multi-layer readout (mean of logits or one stacked regression), the aggregation rule. ``a+b`` combines levers.
Every lever is fitted by :func:`interp.probes.train.train_probeset` on the **same** three-way split and seeds, so
its row reads:

* **held out** (test prompts, which neither fitted nor calibrated it): AUROC per check and probe − n-gram, and the
  guard's per-answer TPR and FPR on every check it makes, at the threshold set on the calibration prompts' own
  benign answers (coverage 1);
* **calibration** (not test): the per-answer TPR on the calibration prompts' harmful answers at that threshold,
  the number a recipe may be chosen by without touching the test prompts;
* **leave one source out** at the lever's readout (single layer or stacked): macro and worst-source AUROC over
  grouped folds of every row, and on how many sources the probe beats the n-gram baseline (CI above 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from interp import UserError
from interp.probes.oof import ProbeConfig
from interp.probes.train import TrainConfig
from interp.results import Result

__all__ = ["LEVERS", "LeverConfig", "LeverResult", "compare_levers", "resolve_lever"]

PAPER_LAYER_FRACTION = 19 / 28  # ADA's probe layer on Qwen2.5-7B (the Qwen family, as the embedded model)

# name -> (what it changes, TrainConfig overrides (plus layer_fraction and min_depth, resolved per store),
# ProbeConfig overrides)
LEVERS: dict[str, tuple[str, dict, dict]] = {
    "base": ("the base recipe as given", {}, {}),
    "ln1": ("the ADA readout: the block's normalised input (ln1) instead of resid_post", {"hook": "ln1"}, {}),
    "spanmean": ("the mean over every Safety-Token span token instead of the probe token (measured only: the live "
                 "guard reads the probe token)", {"position": "span_mean"}, {}),
    "userheader": ("the injected user header's role token instead of the assistant header's probe token (measured "
                   "only: a store extracted with --controls true; the live guard injects the assistant header)",
                   {"position": "user_header"}, {}),
    "respmean": ("the mean over the response so far instead of the probe token (measured only: a store extracted "
                 "with --controls true)", {"position": "response_mean"}, {}),
    "balance": ("each source carries the same weight within its class", {}, {"balance_sources": True}),
    "standardize": ("features standardised per training set", {}, {"standardize": True}),
    "hardneg3": ("hard negatives (benign forced-opener answers, own refusals) weigh 3x a benign row", {},
                 {"hard_negative_weight": 3.0}),
    "hardneg10": ("hard negatives (benign forced-opener answers, own refusals) weigh 10x a benign row", {},
                  {"hard_negative_weight": 10.0}),
    "hardneg30": ("hard negatives (benign forced-opener answers, own refusals) weigh 30x a benign row", {},
                  {"hard_negative_weight": 30.0}),
    "judged": ("the own deep prefills a content judge calls harmless (--judgments DIR) left out of training",
               {"drop_judged_harmless": True}, {}),
    "mean3": ("mean of the logits of the 3 best layers' probes", {"combine_top": 3}, {}),
    "stack3": ("one regression on the 3 best layers' standardised features", {"combine_top": 3, "stack": True}, {}),
    "stack5": ("one regression on the 5 best layers' standardised features", {"combine_top": 5, "stack": True}, {}),
    # ADA's own protocol: logistic regression (C=1, balanced, raw features) on ln1 at the paper's layer fraction
    # (Qwen2.5-7B: layer 19 of 28), trained on depths 25 and deeper, threshold 0.5
    "paper": ("ADA's protocol: ln1 at the paper's layer fraction 19/28, C=1, balanced, no standardisation, trained "
              "on depths >= 25, threshold 0.5 (not calibrated)",
              {"hook": "ln1", "layer_fraction": PAPER_LAYER_FRACTION, "min_depth": 25, "fixed_threshold": 0.5},
              {"C": 1.0, "class_weight": "balanced", "standardize": False, "balance_sources": False}),
    "c0.1": ("stronger L2 regularisation: C = 0.1 instead of the base's C", {}, {"C": 0.1}),
    "c0.01": ("much stronger L2 regularisation: C = 0.01 instead of the base's C", {}, {"C": 0.01}),
    "ema": ("moving average of check scores (alpha 0.5) instead of any check", {"aggregate": "ema",
                                                                                 "ema_alpha": 0.5}, {}),
    "2of3": ("2 of the last 3 checks instead of any check", {"aggregate": "k_of_n", "k_of_n": 2, "window": 3}, {}),
}


def resolve_lever(name: str) -> tuple[str, dict, dict]:
    """``a+b+...`` as one lever: its description and the merged overrides (one-line error on an unknown name or
    two levers that set one option differently)."""
    parts = [p for p in name.split("+") if p]
    unknown = [p for p in parts if p not in LEVERS]
    if not parts or unknown:
        raise UserError(f"unknown lever {(unknown or [name])[0]!r}; levers: {', '.join(LEVERS)} (combine with +)")
    train: dict = {}
    probe: dict = {}
    for p in parts:
        for merged, add in ((train, LEVERS[p][1]), (probe, LEVERS[p][2])):
            for k, v in add.items():
                if k in merged and merged[k] != v:
                    raise UserError(f"lever {name!r}: {p} sets {k}={v!r} where another lever set {merged[k]!r}")
                merged[k] = v
    return "; ".join(LEVERS[p][0] for p in parts), train, probe


@dataclass
class LeverConfig(TrainConfig):
    """The base recipe (every ``anydepth train`` option) and the levers to measure against it."""

    levers: list[str] = field(default_factory=lambda: ["base", "ln1", "balance", "stack3", "mean3", "ema"],
                              metadata={"help": f"levers to measure ({', '.join(LEVERS)}; combine with +)"})

    def validate(self) -> None:
        TrainConfig.validate(self)
        if not self.levers:
            raise UserError("--levers needs at least one lever (base is the recipe as given)")
        for name in self.levers:
            resolve_lever(name)


@dataclass
class LeverRow(Result):
    """One lever's numbers (module doc); dict payloads are ``{value, lo, hi}`` summaries and grouped rates."""

    kind = "lever"
    lever: str
    changes: str
    readout: dict[str, Any]
    threshold: float
    test_auroc: dict | None
    test_minus_ngram: dict | None
    test_tpr: dict | None
    test_fpr: dict | None
    test_tpr_by_depth: list[dict]
    calibration_tpr: dict | None
    loso: dict[str, Any]
    test_answer_auroc: dict | None = None  # own benign vs harmful test answers, whatever the threshold
    # harmful answers by kind ("prefill": the model's own deep prefills; "dataset": third-party text), test and
    # calibration prompts
    test_tpr_by_kind: dict[str, dict] = field(default_factory=dict)
    calibration_tpr_by_kind: dict[str, dict] = field(default_factory=dict)
    dropped_judged_harmless: int | None = None  # lever "judged": training rows it left out


@dataclass
class LeverResult(Result):
    """Every lever's row on one store and split (see the module doc)."""

    kind = "levers"
    rows: list[LeverRow]
    store: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def row(self, lever: str) -> LeverRow:
        return next(r for r in self.rows if r.lever == lever)

    def summary(self) -> str:
        from interp.probes.tables import lever_table

        return "\n".join([*lever_table(self), *(f"- {note}" for note in self.notes)])

    def save(self, out: str | Path) -> Path:
        """``levers.json``, ``levers.md`` and the figure ``levers.png`` / ``.svg`` into folder ``out``."""
        from interp.probes.plots import plot_levers

        out = Path(out)
        path = super().save(out / "levers.json")
        (out / "levers.md").write_text(self.summary() + "\n")
        plot_levers(self, out / "levers")
        return path


def compare_levers(store, cfg: LeverConfig, probe: ProbeConfig | None = None, *, progress: bool = True
                   ) -> LeverResult:
    """Each of ``cfg.levers`` fitted and measured on an open store (module doc)."""
    from tqdm.auto import tqdm

    from interp.config import to_dict
    from interp.probes.probeset import jsonable
    from interp.probes.stores import store_answers, store_texts

    probe = probe or ProbeConfig()
    cfg.validate()
    plans = _plans(store, cfg, probe)  # every lever checked before any is fitted
    answers = store_answers(store)
    texts = {depths: store_texts(store, list(depths) if depths else None)  # read once per depth selection
             for depths in {tuple(plan[2].depths or ()) for plan in plans}}
    rows = [_measure(store, *plan, texts[tuple(plan[2].depths or ())], answers)
            for plan in tqdm(plans, desc="levers", unit="lever", disable=not progress)]
    return LeverResult(rows=rows, store=str(getattr(store, "path", "")), provenance=jsonable(store.provenance),
                       config={"levers": to_dict(cfg), "probe": to_dict(probe)},
                       notes=["every lever on the same three-way split and seeds; held-out numbers on the test "
                              "prompts, calibration TPR on the calibration prompts (choose recipes by it, never "
                              "by the test columns)"])


def _plans(store, cfg: LeverConfig, probe: ProbeConfig) -> list[tuple[str, str, TrainConfig, ProbeConfig]]:
    """Each lever's (name, changes, train config, probe config), checked against the store (one-line errors)."""
    from interp.extract.store import canonical_hook

    base = TrainConfig(**{k: v for k, v in cfg.__dict__.items() if k != "levers"})
    n_layers = len(base.resolve_layers(store))
    plans = []
    for name in cfg.levers:
        changes, t_over, p_over = resolve_lever(name)
        t_cfg, p_cfg = replace(base, **_per_store(store, t_over)), replace(probe, **p_over)
        t_cfg.validate()
        if t_cfg.hook and canonical_hook(t_cfg.hook) not in store.hooks:
            raise UserError(f"lever {name!r} reads hook {canonical_hook(t_cfg.hook)}, which the store lacks (it "
                            f"holds {list(store.hooks)}); re-extract with --hooks resid_post {t_cfg.hook}")
        study = getattr(store, "study_positions", [])
        if isinstance(t_cfg.position, str) and t_cfg.position in ("user_header", "response_mean") \
                and t_cfg.position not in study:
            raise UserError(f"lever {name!r} reads {t_cfg.position}, which the store lacks; re-extract it with "
                            "--controls true")
        if t_cfg.combine_top > n_layers:
            raise UserError(f"lever {name!r}: --combine-top {t_cfg.combine_top} exceeds the {n_layers} fitted layers")
        plans.append((name, changes, t_cfg, p_cfg))
    return plans


def _per_store(store, over: dict) -> dict:
    """Overrides with ``layer_fraction`` (of the model's layers, rounded) and ``min_depth`` (the stored depths at
    or below it dropped) turned into the store's ``layer`` and ``depths``."""
    over = dict(over)
    if "layer_fraction" in over:
        n = int((getattr(store, "provenance", None) or {}).get("n_layers") or 0)
        if not n:
            raise UserError("the paper lever needs the model's layer count, which this store does not record")
        over["layer"] = int(round(over.pop("layer_fraction") * n))
        if over["layer"] not in [int(x) for x in store.layers]:
            raise UserError(f"the paper lever reads layer {over['layer']} ({PAPER_LAYER_FRACTION:.3f} of {n}), which "
                            f"the store lacks (it holds {[int(x) for x in store.layers]}); re-extract with it")
    if "min_depth" in over:
        floor = over.pop("min_depth")
        over["depths"] = [int(d) for d in store.depths if int(d) >= floor]
    return over


def _measure(store, name: str, changes: str, t_cfg: TrainConfig, p_cfg: ProbeConfig, texts, answers) -> LeverRow:
    from interp.probes.train import train_probeset

    ps = train_probeset(store, t_cfg, p_cfg, progress=False)
    test = ps.metrics.get("test") or {}
    pa = test.get("per_answer") or {}
    by_depth = [{"depth": r["depth"], **r["tpr_at_threshold"]} for r in (test.get("per_depth") or {}).get("probe", [])
                if r.get("tpr_at_threshold", {}).get("n")]
    readout = {"layers": ps.readout, "hook": ps.hook, "stacked": bool(ps.metrics["readout"].get("stacked")),
               "rule": ps.metrics["readout"]["rule"], "aggregate": ps.thresholds["aggregate"]}
    return LeverRow(lever=name, changes=changes, readout=readout, threshold=float(ps.threshold),
                    test_auroc=((test.get("per_check") or {}).get("probe") or {}).get("auroc"),
                    test_minus_ngram=test.get("probe_minus_ngram_auroc"), test_tpr=pa.get("tpr"),
                    test_fpr=pa.get("fpr"), test_tpr_by_depth=by_depth,
                    calibration_tpr=ps.thresholds["calibration"].get("tpr_harmful"),
                    loso=_loso(store, ps, t_cfg, p_cfg, texts, answers),
                    test_answer_auroc=pa.get("auroc_own_vs_harmful"), test_tpr_by_kind=pa.get("tpr_by_kind") or {},
                    calibration_tpr_by_kind=ps.thresholds["calibration"].get("tpr_harmful_by_kind") or {},
                    dropped_judged_harmless=ps.metrics.get("dropped_judged_harmless"))


def _loso(store, ps, t_cfg: TrainConfig, p_cfg: ProbeConfig, texts, answers) -> dict[str, Any]:
    """Leave one source out at the lever's readout (:func:`interp.probes.transfer.readout_loso`): the macro and
    worst-source AUROC and the per-source probe − n-gram calls."""
    from interp.probes.transfer import readout_loso

    res = readout_loso(store, ps, t_cfg, p_cfg, texts=texts, answers=answers)
    if res.note:
        return {"note": res.note}
    got = res.loso
    calls = [r.get("probe_minus_ngram") for r in got.get("rows", []) if r.get("probe_minus_ngram")]
    return {"macro": res.macro, "worst": res.worst, "ngram_macro": (got.get("macro") or {}).get("ngram"),
            "per_depth": (got.get("per_depth") or {}).get("probe", []),
            "beats_ngram": sum(c["lo"] > 0 for c in calls), "loses_to_ngram": sum(c["hi"] < 0 for c in calls),
            "n_sources": len(calls), "rows": got.get("rows", [])}
