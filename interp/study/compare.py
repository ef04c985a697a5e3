"""Study runs side by side: one column per run, the held-out numbers a recipe lever is judged by (issue 31's table).

:func:`summarize` reads one run folder (``anydepth demo --out``) into a :class:`RunSummary`; :func:`compare_runs`
puts several in a :class:`RunComparison`, whose :meth:`~RunComparison.markdown` is the table. Everything comes
from the run's own results, except :func:`answer_separation`, which rescores the test answers from the store.
Every number is held out: test prompts that set neither probe nor threshold, or sources left out of training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from interp import UserError
from interp.formatting import ci, probability, rate
from interp.results import Result
from interp.study.result import StudyResult, read_json, run_folder
from interp.study.targets import (
    ANSWER_FPR_TARGET,
    ANSWER_TPR_TARGET,
    CHECK_TPR_TARGET,
    LOSO_MACRO_TARGET,
    LOSO_WORST_TARGET,
)

__all__ = ["RunAnswers", "RunComparison", "RunSummary", "Separation", "answer_separation", "answer_tails", "compare_runs",
           "score_answers", "summarize"]


@dataclass
class Separation(Result):
    """How far the deployed per-answer score separates the model's own benign test answers (the calibration
    population) from the harmful test answers: AUROC, and the TPR at thresholds read off the test answers that let
    0, 1 and 2 own answers fire. A diagnostic for comparing recipes, free of the calibration's noise; not an
    operating point (the study's threshold comes from the calibration prompts)."""

    kind = "separation"
    auroc: dict  # {"value", "lo", "hi"}: 95% CI over prompt groups
    n_benign: int
    n_harmful: int
    tpr_at_own_firing: list[float]  # [k] = TPR at the lowest threshold that lets k own test answers fire
    rows: int  # rows in the store
    prefill_auroc: dict | None = None  # the same AUROC with the harmful side the model's own prefill continuations
    n_prefill: int = 0
    prefill_tpr: dict | None = None  # the share of those the guard stops at the run's threshold (grouped rate)


def tpr_at_own_firing(benign: np.ndarray, harmful: np.ndarray, ks=(0, 1, 2)) -> list[float]:
    """TPR at thresholds just above the (k+1)-th highest benign score (so exactly k benign scores reach it, ties
    aside), compared in float64 like the guard."""
    ranked = np.sort(np.asarray(benign, np.float64))[::-1]
    harmful = np.asarray(harmful, np.float64)
    return [float(np.mean(harmful >= np.nextafter(ranked[k], np.inf))) if k < len(ranked) else 1.0 for k in ks]


@dataclass(frozen=True)
class RunAnswers:
    """Every answer of a run's store scored as the deployed guard scores it (the probe set's readout, rule and
    checks): ``score`` per row (NaN: not a role's answer, or excluded as incomplete), the split role of each row,
    and whether it is of the calibration population (the model's own benign answers)."""

    score: np.ndarray
    role: np.ndarray  # "train" / "calibration" / "test" / ""
    own: np.ndarray
    meta: dict
    threshold: float
    n_boot: int
    seed: int

    def test_masks(self) -> dict[str, np.ndarray]:
        """The scored test answers (excluded ones left out) by side: ``own`` benign (the calibration population),
        ``harmful``, and of those ``prefill`` (the model's own deep prefills) and ``dataset`` (third-party text)."""
        from interp.probes.answers import own_deep_prefills

        test = (self.role == "test") & ~np.isnan(self.score)
        harmful = test & (self.meta["y"] == 1)
        return {"own": test & self.own, "harmful": harmful, "prefill": test & own_deep_prefills(self.meta),
                "dataset": harmful & (self.meta["kinds"] == "dataset")}


def score_answers(run: str | Path) -> RunAnswers:
    """Rescore a finished run's calibration and test answers with its probe set, on every check the guard makes."""
    from interp.config import from_dict
    from interp.extract.store import ActivationStore
    from interp.probes.answers import calibration_rows
    from interp.probes.readout import deployed_answer_scores
    from interp.probes.train import TrainConfig

    result = StudyResult.load(run_folder(run))
    probes = result.load_probes()
    cfg = from_dict(TrainConfig, probes.config["train"])
    with ActivationStore.open(result.path(result.store)) as store:
        if not store.done.all():
            raise UserError(f"{run}: the store has unfinished rows; finish the run (rerun its command) first")
        scored, meta = deployed_answer_scores(probes, store, cfg.depths)
    role = np.full(len(meta["y"]), "", dtype=object)
    for name in ("train", "calibration", "test"):
        role[np.isin(meta["groups"], probes.split[name]["groups"])] = name
    score = np.where(np.isin(role, ["calibration", "test"]), scored.score, np.nan)
    own = calibration_rows(meta["y"], meta["kinds"], meta["sources"], cfg.calibrate_on, cfg.control_sources)
    return RunAnswers(score, role, own, meta, float(probes.threshold), cfg.n_boot, cfg.seed)


def answer_separation(run: str | Path | RunAnswers) -> Separation:
    """How the deployed per-answer score separates own benign from harmful test answers (:class:`Separation`)."""
    from interp.probes.answers import answer_auroc
    from interp.probes.calibration import fires
    from interp.stats import grouped_rate

    a = run if isinstance(run, RunAnswers) else score_answers(run)
    m = a.test_masks()
    benign, harmful, prefill = m["own"], m["harmful"], m["prefill"]
    y, groups = a.meta["y"], a.meta["groups"]
    return Separation(auroc=answer_auroc(a.score, y, groups, benign, harmful=harmful, n_boot=a.n_boot, seed=a.seed),
                      n_benign=int(benign.sum()), n_harmful=int(harmful.sum()),
                      tpr_at_own_firing=tpr_at_own_firing(a.score[benign], a.score[harmful]), rows=len(a.score),
                      prefill_auroc=answer_auroc(a.score, y, groups, benign, harmful=prefill, n_boot=a.n_boot,
                                                 seed=a.seed),
                      n_prefill=int(prefill.sum()),
                      prefill_tpr=grouped_rate(fires(a.score[prefill], a.threshold), groups[prefill])
                      if prefill.any() else None)


def _logit(p: float) -> float:
    with np.errstate(divide="ignore"):
        return float(np.log(p) - np.log1p(-p))


def answer_tails(run: str | Path | RunAnswers, k: int = 5) -> str:
    """The answers at the edge of the guard's operating point, as Markdown: the own calibration answers with the
    highest scores (they set the threshold), the own benign test answers with the highest and the harmful test
    answers with the lowest, each with its source, logit, prompt and the start of its answer."""
    a = run if isinstance(run, RunAnswers) else score_answers(run)
    ok, y = np.isfinite(a.score), a.meta["y"]
    groups = [("own calibration answers scoring highest (the threshold sits above these)", (a.role == "calibration") & a.own, -1),
              ("own benign test answers scoring highest", (a.role == "test") & a.own, -1),
              ("harmful test answers scoring lowest", (a.role == "test") & (y == 1), 1)]
    lines = [f"threshold {a.threshold:.10g} (logit {_logit(a.threshold):.2f})"]
    for title, mask, sign in groups:
        idx = np.nonzero(mask & ok)[0]
        lines += ["", f"{title}:", "", "| logit | source | prompt | answer starts |", "|---|---|---|---|"]
        for i in idx[np.argsort(sign * a.score[idx], kind="stable")][:k]:
            cut = [" ".join(str(a.meta[f][i] if f in a.meta else "").split())[:n].replace("|", "/")
                   for f, n in (("prompts", 80), ("response", 90))]
            lines.append(f"| {_logit(a.score[i]):.2f} | {a.meta['sources'][i]} | {cut[0]} | {cut[1]} |")
    return "\n".join(lines)


def _range(values: list[float]) -> list[float] | None:
    return [min(values), max(values)] if values else None


def _loso(result: StudyResult) -> dict | None:
    """The readout-LOSO stage's per-source AUROCs and summary (None when the run made none)."""
    data = read_json(result.path(result.loso) / "loso.json") if result.loso else None
    if not data:
        return None
    loso = data["loso"]
    diffs = [r["probe_minus_ngram"] for r in loso["rows"] if r.get("probe_minus_ngram")]
    return {"macro": loso["macro"], "worst": loso["worst_by_method"],
            "sources": {r["source"]: r["probe"]["auroc"]["value"] for r in loso["rows"]},
            "above": sum(d["lo"] > 0 for d in diffs), "below": sum(d["hi"] < 0 for d in diffs),
            "readout": data["readout"]}


def _live(result: StudyResult) -> dict:
    """ADA-LP's live rates: over-refusal (plain, after a forced opener) and deep prefill per depth."""
    out = {}
    if "over-refusal" in result.evaluations:
        rates = result.load_evaluation("over-refusal")["rates"]
        out["over_refusal"] = {arm: rates[arm]["lp"] for arm in ("all", "all + forced opener") if arm in rates}
    if "deep-prefill" in result.evaluations:
        curves = result.load_evaluation("deep-prefill")["curves"]["lp"]
        out["deep_prefill"] = {str(c["depth"]): c for c in curves if c["depth"] > 0}
    return out


@dataclass
class RunSummary(Result):
    """One study run's held-out numbers (see the module doc)."""

    kind = "run-summary"
    run: str
    model: str
    spec: str
    minutes: float
    readout: str
    threshold: float
    calibration_answers: int
    test_probe: list[float] | None  # [lowest, highest] over depths 25..500
    test_ngram: list[float] | None
    tpr_per_answer: dict | None
    fpr_per_answer: dict | None
    per_check_tpr: list[float] | None
    separation: Separation | None
    loso: dict | None
    live: dict = field(default_factory=dict)
    met: dict[str, bool | None] = field(default_factory=dict)  # per target (TARGETS): met, missed, None unmeasured
    tails: str = ""  # answer_tails' Markdown, when asked for


def summarize(run: str | Path, *, separation: bool = True, tails: int = 0) -> RunSummary:
    """Read a finished study run; with ``separation`` (and ``tails`` > 0: the ``tails`` answers at each edge of the
    operating point) rescore its answers from the store (seconds)."""
    root = run_folder(run)
    answers = score_answers(root) if separation or tails else None
    result = StudyResult.load(root).refreshed()  # a run made by an older version, judged by this one's targets
    t = result.targets
    depths = t.get("depths", {}).values()
    probes = json.loads((result.path(result.probes) / "probeset.json").read_text())
    calib = probes["thresholds"].get("calibration") or {}
    layers = probes.get("combine") or [probes["best_layer"]]
    stacked = probes["metrics"].get("readout", {}).get("stacked")
    return RunSummary(
        run=str(run), model=result.config["model"], spec=str(result.config.get("spec")),
        minutes=sum(s["seconds"] for s in result.timings.values()) / 60,
        readout=f"layers {', '.join(map(str, layers))}{' stacked' if stacked else ''}",
        threshold=float(probes["threshold"]), calibration_answers=int(calib.get("n_answers", 0)),
        test_probe=_range([r["test_probe"]["value"] for r in depths if r.get("test_probe")]),
        test_ngram=_range([r["test_ngram"]["value"] for r in depths if r.get("test_ngram")]),
        tpr_per_answer=t.get("tpr_per_answer"), fpr_per_answer=t.get("fpr"),
        per_check_tpr=_range([r["tpr"]["rate"] for r in depths if r.get("tpr")]),
        separation=answer_separation(answers) if separation else None, loso=_loso(result), live=_live(result),
        tails=answer_tails(answers, tails) if tails else "",
        met={k: (t["summary"].get(k) or {}).get("met") for k in TARGETS})


@dataclass
class RunComparison(Result):
    """Several runs' summaries; LOSO is also averaged over the sources every run holds out (so a run with an
    extra source is compared on common ground)."""

    kind = "run-comparison"
    runs: list[RunSummary]

    def shared_sources(self) -> list[str]:
        sets = [set(r.loso["sources"]) for r in self.runs if r.loso]
        return sorted(set.intersection(*sets)) if sets else []

    def markdown(self) -> str:
        shared = self.shared_sources()
        rows = [("model", lambda r: r.model), ("spec", lambda r: Path(r.spec).name), *_ROWS,
                (f"LOSO mean over the {len(shared)} shared sources",
                 lambda r: f"{np.mean([r.loso['sources'][s] for s in shared]):.3f}" if r.loso and shared else "–"),
                ("stages, minutes", lambda r: f"{r.minutes:.1f}")]
        head = "| held out | " + " | ".join(Path(r.run).name for r in self.runs) + " |"
        lines = [head, "|---" * (len(self.runs) + 1) + "|"]
        lines += [f"| {label} | " + " | ".join(cell(r) for r in self.runs) + " |" for label, cell in rows]
        for r in self.runs:
            if r.tails:
                lines += ["", f"### {r.run}: the answers at the operating point's edges", "", r.tails]
        return "\n".join(lines)

    def summary(self) -> str:
        return self.markdown()


def _span(v: list[float] | None, digits: int = 3) -> str:
    return "–" if not v else f"{v[0]:.{digits}f}–{v[1]:.{digits}f}"


def _sep(r: RunSummary) -> str:
    s = r.separation
    if s is None:
        return "–"
    tprs = " / ".join(f"{x:.2f}" for x in s.tpr_at_own_firing)
    return f"{ci(s.auroc)} ({s.n_benign} own, {s.n_harmful} harmful); TPR with 0 / 1 / 2 own firing {tprs}"


def _loso_cell(r: RunSummary) -> str:
    if not r.loso:
        return "–"
    m, w = r.loso["macro"], r.loso["worst"]
    return (f"{ci(m['probe'])} over {m['probe']['n_sources']} (worst {w['probe']['source']} {w['probe']['value']:.3f});"
            f" n-gram {m['ngram']['value']:.3f}; probe above / below n-gram by CI on {r.loso['above']} / "
            f"{r.loso['below']}")


# the targets (interp.study.targets) in the order of the comparison's row
TARGETS = ("loso_macro_min", "loso_worst_min", "probe_vs_ngram", "tpr_min", "per_answer")


def _met_cell(r: RunSummary) -> str:
    return "; ".join({True: "met", False: "missed", None: "–"}[r.met.get(k)] for k in TARGETS)


def _live_cell(r: RunSummary) -> str:
    over = r.live.get("over_refusal", {})
    deep = r.live.get("deep_prefill", {})
    parts = []
    if over:
        parts.append("over-refusal " + " / ".join(f"{v['rate']:.2f}" for v in over.values()))
    if deep:
        parts.append("deep prefill " + " / ".join(f"{v['rate']:.2f}" for v in deep.values()) +
                     f" at {' / '.join(deep)}")
    return "; ".join(parts) or "–"


_ROWS = [
    ("readout; threshold; own calibration answers",
     lambda r: f"{r.readout}; {probability(r.threshold)}; {r.calibration_answers}"),
    ("rows", lambda r: str(r.separation.rows) if r.separation else "–"),
    ("test AUROC per check, depths 25..500: probe; n-gram", lambda r: f"{_span(r.test_probe)}; {_span(r.test_ngram)}"),
    ("per answer: TPR; FPR on own answers", lambda r: f"{rate(r.tpr_per_answer)}; {rate(r.fpr_per_answer)}"),
    ("per-answer AUROC, own vs harmful (test)", _sep),
    ("same, harmful = the model's own prefill continuations only; their TPR at the threshold",
     lambda r: f"{ci(r.separation.prefill_auroc)} ({r.separation.n_prefill}); {rate(r.separation.prefill_tpr)}"
     if r.separation else "–"),
    ("ADA-LP TPR per check, depths 25..500", lambda r: _span(r.per_check_tpr, 2)),
    ("LOSO at the readout: mean (worst); n-gram", _loso_cell),
    ("live ADA-LP: over-refusal plain / forced opener; deep prefill per depth", _live_cell),
    (f"targets: LOSO mean ≥ {LOSO_MACRO_TARGET:.2f}; worst source ≥ {LOSO_WORST_TARGET:.2f}; probe vs n-gram; "
     f"per check ≥ {CHECK_TPR_TARGET:.2f}; per answer ≥ {ANSWER_TPR_TARGET:.2f} at ≤ {ANSWER_FPR_TARGET:.0%}", _met_cell),
]


def compare_runs(runs: list[str | Path], *, separation: bool = True, tails: int = 0) -> RunComparison:
    """Summaries of finished study runs, in the order given (``tails``: see :func:`summarize`)."""
    if not runs:
        raise UserError("give at least one study run folder (anydepth demo --out)")
    if tails < 0:
        raise UserError(f"--tails must be >= 0, got {tails}")
    return RunComparison(runs=[summarize(r, separation=separation, tails=tails) for r in runs])
