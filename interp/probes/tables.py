"""The probe tables as Markdown lines, written once: the CLI prints them and the study report embeds them."""

from __future__ import annotations

from interp.formatting import ci, diff, probability, rate

__all__ = ["METHOD_NAMES", "heldout_table", "lever_table", "loso_table", "positions_table"]

METHOD_NAMES = {"probe": "Safety-Token probe", "ngram": "n-gram text (TF-IDF 1–2-grams, prompt + response prefix)",
                "last_token": "last generated token", "prompt": "last prompt token",
                "shuffled": "probe on prompt-shuffled labels"}


def loso_table(loso: dict | None) -> list[str]:
    """Leave-one-source-out rows (probe and n-gram AUROC, their difference, the per-answer rate at the threshold)
    and the mean / worst source per method; one line when it does not apply."""
    if not loso or not loso.get("rows"):
        return [f"Not applicable: {(loso or {}).get('note', 'no sources recorded')}."]
    lines = ["| held-out source | kind | labels | answers | probe AUROC | n-gram AUROC | probe − n-gram | "
             "probe rate at threshold |", "|---|---|---|---|---|---|---|---|"]
    for r in loso["rows"]:
        head = f"| {r['source']} | {r.get('kind', '')} | {'/'.join(r['labels'])} | {r['n_answers']} |"
        if "skipped" in r:
            lines.append(f"{head} skipped: {r['skipped']} | | | |")
            continue
        p, g = r.get("probe") or {}, r.get("ngram") or {}
        at = "; ".join(f"{k.upper()} {rate(p.get(k))}" for k in ("tpr", "fpr") if p.get(k)) or p.get("rates", "–")
        lines.append(f"{head} {ci(p.get('auroc'))} | {ci(g.get('auroc'))} | {diff(r.get('probe_minus_ngram'))} | "
                     f"{at} |")
    lines.append("")
    for m, a in (loso.get("macro") or {}).items():
        w = loso["worst_by_method"][m]
        lines.append(f"- {m}: mean over {a['n_sources']} held-out sources {ci(a)}; worst source **{w['source']}** "
                     f"{w['value']:.3f}.")
    return lines


def heldout_table(test: dict) -> list[str]:
    """AUROC per check of the probe and each baseline on the held-out test prompts, with the paired difference."""
    lines = ["| method | AUROC per check [95% CI] | probe − method [95% CI] |", "|---|---|---|"]
    diffs = test.get("probe_minus_baseline_auroc") or {}
    for m in [m for m in ("probe", "ngram", "last_token", "prompt", "shuffled") if m in test["per_check"]]:
        summ, d = test["per_check"][m], diffs.get(m)
        cell = "" if d is None else diff(d) + (" (probe better)" if d["beats"] else "")
        lines.append(f"| {METHOD_NAMES[m]} | {ci(summ and summ['auroc'])} | {cell} |")
    return lines


def lever_table(result) -> list[str]:
    """One row per lever of a :class:`interp.probes.levers.LeverResult`, then what each lever changes."""
    lines = ["| lever | readout | LOSO AUROC, mean over sources | worst source | lowest per-depth mean (≥ 25) | "
             "sources probe > n-gram / < / of | test AUROC per check | test probe − n-gram | "
             "per-answer TPR, test | … own deep prefills | per-answer FPR, test own | per-answer TPR, calibration "
             "prompts | … own deep prefills | per-answer AUROC, test own vs harmful |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result.rows:
        layers = ",".join(str(x) for x in r.readout["layers"])
        shape = " stacked" if r.readout["stacked"] else " mean" if len(r.readout["layers"]) > 1 else ""
        read = f"{r.readout['hook'].replace('hook_', '')} L{layers}{shape}"
        lines.append(f"| {r.lever} | {read} | {_loso_cells(r.loso)} | {ci(r.test_auroc)} | "
                     f"{diff(r.test_minus_ngram)} | {rate(r.test_tpr)} | {rate(r.test_tpr_by_kind.get('prefill'))} | "
                     f"{rate(r.test_fpr)} | {rate(r.calibration_tpr)} | "
                     f"{rate(r.calibration_tpr_by_kind.get('prefill'))} | {ci(r.test_answer_auroc)} |")
    lines += ["", *(f"- **{r.lever}**: {r.changes}; threshold {probability(r.threshold)} ({r.readout['rule']})"
                       + ("" if r.dropped_judged_harmless is None else
                          f"; {r.dropped_judged_harmless} own deep prefills of the training prompts left out") + "."
                    for r in result.rows)]
    return lines


def _loso_cells(loso: dict) -> str:
    """The four leave-one-source-out cells of a lever row."""
    if "note" in loso:
        return f"{loso['note']} | – | – | –"
    worst, low = loso.get("worst") or {}, min_macro(loso)
    worst_cell = f"{worst['source']} {worst['value']:.3f}" if worst else "–"
    low_cell = "–" if low is None else f"{low['value']:.3f} (depth {low['depth']})"
    return (f"{ci(loso.get('macro'))} | {worst_cell} | {low_cell} | "
            f"{loso['beats_ngram']} / {loso['loses_to_ngram']} / {loso['n_sources']}")


def min_macro(loso: dict, min_depth: int = 25) -> dict | None:
    """The lowest per-depth mean-over-sources LOSO AUROC at depths >= ``min_depth`` (with its depth), or None."""
    import math

    cells = [c for c in loso.get("per_depth", []) if c["depth"] >= min_depth]
    if not cells:
        return None
    low = min(cells, key=lambda c: c["macro"]["value"] if math.isfinite(c["macro"]["value"]) else math.inf)
    return {"depth": low["depth"], **low["macro"]}


def positions_table(result) -> list[str]:
    """One row per (layer, position): out-of-fold AUROC, header − position, leave-one-source-out and the
    prompt-controlled AUROCs (each with its 95% CI over prompt groups)."""
    from interp.probes.position_names import LABELS

    lines = ["| layer | position | AUROC (pooled over depths) | header − position | LOSO mean (worst) | "
             "within harmful prompts | within benign prompts |", "|---|---|---|---|---|---|---|"]
    for r in result.rows:
        lo = r.loso or {}
        loso = f"{ci(lo.get('macro'))} ({lo['worst']['value']:.3f} {lo['worst']['source']})" if lo.get("worst") \
            else "–"
        within = [ci(c) if "value" in c else "–" for c in (r.contrasts.get("harmful", {}),
                                                            r.contrasts.get("benign", {}))]
        lines.append(f"| {r.layer} | {LABELS.get(r.position, r.position)} | {ci(r.auroc)} | {diff(r.vs_header)} | "
                     f"{loso} | {within[0]} | {within[1]} |")
    return lines
