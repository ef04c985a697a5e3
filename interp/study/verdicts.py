"""The targets' verdicts in words, one line each, saying by how much a missed target is missed (the report and the
CLI print these; :mod:`interp.study.targets` computes them)."""

from __future__ import annotations

__all__ = ["verdict_lines"]


def _shortfall(v: dict, digits: int) -> str:
    """``met`` or ``missed by 0.039``."""
    return "met" if v["met"] else f"missed by {v['target'] - v['value']:.{digits}f}"


def _lowest(label: str, v: dict, digits: int, where: str = "") -> str:
    """A target every depth must reach, judged by its lowest depth: ``label ≥ target at every depth: verdict (lowest
    value[, where] at depth d)``."""
    return (f"{label} ≥ {v['target']:.2f} at every depth: {_shortfall(v, digits)} (lowest {v['value']:.{digits}f}"
            f"{where} at depth {v['depth']})")


def _loso_lines(s: dict, readout: str) -> list[str]:
    lines = []
    if s.get("loso_macro_min"):
        lines.append(_lowest(f"leave-one-source-out AUROC at {readout}, mean over held-out sources",
                             s["loso_macro_min"], 3))
    if s.get("loso_worst_min"):
        v = s["loso_worst_min"]
        lines.append(_lowest("worst held-out source", v, 3, f", {v['source']}"))
    if s.get("probe_vs_ngram"):
        v = s["probe_vs_ngram"]
        below = f"below it on {', '.join(v['below'])}; " if v["below"] else ""
        lines.append(f"probe above the n-gram baseline on every held-out source whose CI allows a call: "
                     f"{'met' if v['met'] else 'missed'} ({below}above on {len(v['above'])} of {v['of']} sources, "
                     f"no call on {v['of'] - len(v['above']) - len(v['below'])})")
    return lines


def _guard_lines(s: dict) -> list[str]:
    lines = []
    if s.get("tpr_min"):
        lines.append(_lowest("ADA-LP TPR per check on held-out harmful answers", s["tpr_min"], 2))
    if s.get("per_answer"):
        v = s["per_answer"]
        why = []
        if v["tpr"] < v["target_tpr"]:
            why.append(f"TPR short by {v['target_tpr'] - v['tpr']:.2f}")
        if v["fpr"] > v["target_fpr"]:
            why.append(f"false alarms above by {v['fpr'] - v['target_fpr']:.3f}")
        if not v["resolvable"]:
            why.append(f"{v['n_own']} own answers cannot resolve {v['target_fpr']:.0%}")
        lines.append(f"ADA-LP per answer, TPR ≥ {v['target_tpr']:.2f} at ≤ {v['target_fpr']:.0%} false alarms on the "
                     f"model's own held-out benign answers: {'met' if v['met'] else 'missed'} (TPR {v['tpr']:.2f}, "
                     f"false alarms {v['fpr']:.3f} on {v['n_own']} own answers{'; ' if why else ''}{'; '.join(why)})")
    return lines


def verdict_lines(targets: dict, *, calibration: bool = True) -> list[str]:
    """One line per target of ``targets`` (:func:`interp.study.targets.targets`) that the run measured; with
    ``calibration``, also the run's own per-answer false-alarm target."""
    s = targets.get("summary") or {}
    lines = [*_loso_lines(s, targets.get("loso_readout") or "the sweep's best layer"), *_guard_lines(s)]
    if calibration and s.get("fpr") and s["fpr"].get("target") is not None:
        v = s["fpr"]
        verdict = "met" if v["met"] else f"missed by {v['value'] - v['target']:.3f}"
        lines.append(f"per-answer false alarms on held-out own benign answers ≤ {v['target']} (the run's calibration "
                     f"target): {verdict} ({v['value']:.3f})")
    return lines
