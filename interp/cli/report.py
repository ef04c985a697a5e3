"""The demo's report: one Markdown page with the figures and a results table, built from the stages' JSON."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import interp
from interp.config import to_dict


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _ci(d: dict | None, digits: int = 3) -> str:
    if not d or d.get("value", d.get("rate")) is None:
        return "–"
    v = d.get("value", d.get("rate"))
    return f"{v:.{digits}f} [{d['lo']:.{digits}f}, {d['hi']:.{digits}f}]"


def _figure(src: Path, figures: Path, name: str) -> str | None:
    if not src.exists():
        return None
    figures.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, figures / name)
    return f"figures/{name}"


def _loso_section(sweep: dict) -> list[str]:
    loso = sweep.get("loso") or {}
    if not loso.get("rows"):
        return ["## Leave-one-source-out", "", f"Not applicable: {loso.get('note', 'no sources recorded')}.", ""]
    lines = ["## Leave-one-source-out (read this first)", "",
             f"Layer {sweep['best_layer']}. Each source is scored by probes trained without it, on the sweep's "
             "grouped folds (so also without its prompt or that prompt's twin); AUROC is against the other class (within the source "
             "when it holds both labels). The per-answer rate uses a threshold set at the target FPR on the *other* "
             "sources' benign answers (an answer = its maximum over stored depths). The n-gram baseline runs on the "
             "same folds.", "",
             "| held-out source | labels | answers | probe AUROC [95% CI] | probe rate at threshold | "
             "n-gram AUROC [95% CI] | n-gram rate |", "|---|---|---|---|---|---|---|"]
    for r in loso["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['source']} | {'/'.join(r['labels'])} | {r['n_answers']} | skipped: {r['skipped']} "
                         "| | | |")
            continue

        def rate(e):
            return "; ".join(f"{k.upper()} {e[k]:.2f}" for k in ("tpr", "fpr") if e and e.get(k) is not None) or "–"

        p, g = r.get("probe"), r.get("ngram")
        lines.append(f"| {r['source']} | {'/'.join(r['labels'])} | {r['n_answers']} | {_ci(p and p['auroc'])} | "
                     f"{rate(p)} | {_ci(g and g['auroc'])} | {rate(g)} |")
    if loso.get("worst"):
        lines += ["", f"Worst source for the probe: **{loso['worst']}**."]
    return lines + [""]


TARGET_DEPTHS = (25, 500)  # the depths the recipe's targets speak about


def targets(sweep: dict | None, probes: dict | None, target_fpr: float) -> dict:
    """The recipe's targets per depth (25..500) from the sweep's pooled leave-one-source-out scores and the probe
    set's held-out test numbers: AUROC (probe and n-gram, with CIs), ADA-LP's TPR at the frozen per-answer
    threshold, and the per-answer false-alarm rate by benign source."""
    lo, hi = TARGET_DEPTHS
    loso = ((sweep or {}).get("loso") or {}).get("per_depth") or {}
    test = ((probes or {}).get("metrics") or {}).get("test") or {}
    rows: dict[int, dict] = {}
    for name, entries in loso.items():
        for e in entries:
            if e and lo <= e["depth"] <= hi:
                rows.setdefault(e["depth"], {})[f"loso_{name}"] = e["auroc"]
                rows[e["depth"]]["loso_n"] = e["n"]
    for name in ("probe", "ngram"):
        for e in (test.get("per_depth") or {}).get(name) or []:
            if lo <= e["depth"] <= hi and e.get("auroc") is not None:
                r = rows.setdefault(e["depth"], {})
                r[f"test_{name}"] = e.get("auroc_ci") or {"value": e["auroc"]}
                if name == "probe":
                    r["tpr"] = e.get("tpr_at_threshold")
    per_answer = test.get("per_answer") or {}

    def worst(key, fn):
        got = [(r[key]["value" if key != "tpr" else "rate"], d) for d, r in rows.items()
               if r.get(key) and r[key].get("value" if key != "tpr" else "rate") is not None]
        return fn(got) if got else None

    w_auc, w_tpr = worst("loso_probe", min), worst("tpr", min)
    beats = [d for d, r in rows.items() if r.get("loso_probe") and r.get("loso_ngram")
             and r["loso_probe"]["value"] > r["loso_ngram"]["value"]]
    fpr = per_answer.get("fpr")
    return {"depths": {int(d): rows[d] for d in sorted(rows)}, "fpr": fpr,
            "fpr_by_source": per_answer.get("fpr_by_source"), "tpr_by_source": per_answer.get("tpr_by_source"),
            "threshold": per_answer.get("threshold"), "target_fpr": target_fpr,
            "summary": {
                "loso_auroc_min": None if w_auc is None else {"value": w_auc[0], "depth": w_auc[1],
                                                              "met": w_auc[0] >= 0.99},
                "loso_above_ngram": {"depths": len(beats), "of": sum(1 for r in rows.values() if r.get("loso_probe"))},
                "tpr_min": None if w_tpr is None else {"value": w_tpr[0], "depth": w_tpr[1], "met": w_tpr[0] >= 0.95},
                "fpr": None if not fpr or fpr.get("rate") is None else {
                    "value": fpr["rate"], "met": target_fpr is None or fpr["rate"] <= target_fpr}}}


def _targets_section(t: dict) -> list[str]:
    if not t["depths"]:
        return []
    lines = ["## Targets at depths 25..500", "",
             "Leave-one-source-out: every row scored by the probe trained without its source (and its prompt), "
             "pooled over sources, at the sweep's best layer (chosen by out-of-fold AUROC over all rows: a mild "
             "selection over the layers). Held-out test: the probe set (its readout layers) on "
             "the test prompts, which set neither the probe nor the threshold. ADA-LP TPR: harmful test answers "
             "whose check at that depth crosses the threshold calibrated per answer on the calibration prompts. "
             "Pooling puts every source's scores on one scale, as the guard's single threshold does, so it is "
             "stricter than the per-source table below. 95% CIs (bootstrap over prompts; Wilson for rates).", "",
             "| depth | LOSO probe AUROC (rows) | LOSO n-gram AUROC | test probe AUROC | test n-gram AUROC | "
             "ADA-LP TPR (harmful test answers) |",
             "|---|---|---|---|---|---|"]
    for d, r in t["depths"].items():
        tpr = r.get("tpr")
        n_loso = r.get("loso_n")
        lines.append(f"| {d} | {_ci(r.get('loso_probe'))} ({n_loso or 0}) | {_ci(r.get('loso_ngram'))} | {_ci(r.get('test_probe'))} "
                     f"| {_ci(r.get('test_ngram'))} | {_ci(tpr, 2)} ({tpr['n'] if tpr else 0}) |")
    s = t["summary"]
    lines.append("")
    if s["loso_auroc_min"]:
        a = s["loso_auroc_min"]
        lines.append(f"- LOSO probe AUROC ≥ 0.99 at every depth: {'met' if a['met'] else 'missed'} (lowest "
                     f"{a['value']:.3f} at depth {a['depth']}); above the n-gram baseline at "
                     f"{s['loso_above_ngram']['depths']} of {s['loso_above_ngram']['of']} depths.")
    if s["tpr_min"]:
        a = s["tpr_min"]
        lines.append(f"- ADA-LP TPR ≥ 0.95 at every depth: {'met' if a['met'] else 'missed'} (lowest {a['value']:.2f} "
                     f"at depth {a['depth']}).")
    if t["fpr"] and t["fpr"].get("rate") is not None:
        by = "; ".join(f"{k} {_ci(v, 2)} ({v['n']})" for k, v in (t["fpr_by_source"] or {}).items() if v["n"])
        lines.append(f"- Per-answer false alarms on held-out benign answers (target {t['target_fpr']}): "
                     f"{_ci(t['fpr'], 3)} of {t['fpr']['n']}{'' if s['fpr']['met'] else ' (above the target)'}; by source: "
                     f"{by}.")
    return lines + [""]


def _probes_section(probes: dict | None) -> list[str]:
    """Split, calibration and the held-out test numbers recorded in ``probeset.json``."""
    if not probes or not probes.get("split"):
        return []
    sp, cal = probes["split"], probes["thresholds"]["calibration"]
    lines = ["## Split, threshold and held-out test numbers", "",
             "Prompts are split by topic-matched pair (twins stay together): **train** (layer choice by grouped CV, "
             "probe fit), **calibration** (the threshold only) and **test** (every number below and every "
             "evaluation further down).", "", "| role | prompt groups | harmful rows | benign rows | sources |",
             "|---|---|---|---|---|"]
    for role in ("train", "calibration", "test"):
        part = sp[role]
        src = ", ".join(f"{k} {v}" for k, v in part["sources"].items())
        lines.append(f"| {role} | {len(part['groups'])} | {part['n_harmful']} | {part['n_benign']} | {src} |")
    sched = probes.get("schedule") or {}
    cov = cal.get("schedule_coverage") or {}
    lines += ["", f"Threshold {cal['threshold']:.4f}, calibrated **per answer** on {cal['n_answers']} benign answers "
                  f"from {cal['basis']} for the guard schedule stride {sched.get('stride')}, early checks "
                  f"{sched.get('early_checks')}, final check {sched.get('final_check')} (a check fires when its score "
                  f"exceeds the threshold; the guard fires on an answer when any check does). "
                  + (f"{cov.get('scored_checks')} of {cov.get('scheduled_checks')} scheduled checks fall on stored "
                     "depths. " if cov else "")
                  + (f"Target per-answer FPR {cal['target_fpr']}." if cal["resolved"] else
                     f"**{cal['n_answers']} calibration answers cannot resolve the target per-answer FPR "
                     f"{cal['target_fpr']}** (that needs ≥ {cal['answers_needed']}); the threshold sits above every "
                     f"calibration answer and the finest FPR this set resolves is {cal['resolution']:.2f}.")]
    test = (probes.get("metrics") or {}).get("test")
    if test:
        pa = test["per_answer"]
        lines += ["", f"Held-out test prompts ({test['n_prompts']} groups; {test['n_harmful']} harmful and "
                      f"{test['n_benign']} benign answers), probe at layer {probes['best_layer']} beside baselines "
                      "fitted on the same training prompts:", "",
                  "| method | AUROC per check [95% CI] | probe − method [95% CI] |", "|---|---|---|"]
        diffs = test.get("probe_minus_baseline_auroc") or {}
        order = [m for m in ("probe", "ngram", "last_token", "prompt", "shuffled") if m in test["per_check"]]
        names = {"probe": "Safety-Token probe", "ngram": "n-gram text (TF-IDF 1–2-grams, prompt + response prefix)",
                 "last_token": "last generated token", "prompt": "last prompt token",
                 "shuffled": "probe on prompt-shuffled labels"}
        for m in order:
            summ = test["per_check"][m]
            d = diffs.get(m)
            cell = "" if d is None else (f"{d['value']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
                                         + (" (probe better)" if d["beats"] else ""))
            lines.append(f"| {names[m]} | {_ci(summ and summ['auroc'])} | {cell} |")
        d = test.get("probe_minus_ngram_auroc")
        if d:
            lines += ["", f"Probe − n-gram AUROC: {d['value']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] — "
                          + ("the probe beats the text-only baseline." if d["beats"] else
                             "**no evidence that the probe beats the text-only baseline** on these prompts.")]
        lost = [names[m] for m, d in diffs.items() if m != "shuffled" and not d["beats"]]
        if lost:
            lines += ["", "The probe does **not** beat (CI of the difference includes 0): " + ", ".join(lost)
                      + ". A Safety-Token claim on these prompts needs it to."]
        lines += ["", f"Per answer at the frozen threshold (test answers): TPR {_ci(pa['tpr'], 2)}, "
                      f"FPR {_ci(pa['fpr'], 2)} (Wilson 95%)."]
    return lines + [""]


def _sweep_section(sweep: dict, figures: Path, sweep_dir: Path) -> list[str]:
    best = sweep["best_layer"]
    i = sweep["layers"].index(best)
    lines = ["## Probe sweep (grouped 5-fold CV by prompt over all stored prompts; out-of-fold numbers)", "",
             f"{sweep.get('n_examples', '?')} responses, {sweep.get('n_pairs', '?')} (response, depth) rows, "
             f"hook `{sweep.get('hook')}`, position `{sweep.get('position')}`. Best layer: **{best}** of "
             f"{len(sweep['layers'])} stored.", "",
             f"| method (layer {best}) | AUROC [95% CI] | accuracy | TPR@1% FPR |", "|---|---|---|---|"]
    for m in sweep["methods"]:
        s = sweep["per_layer"][m][i]
        lines.append(f"| {m} | {_ci(s.get('auroc'))} | {_ci(s.get('acc'))} | {_ci(s.get('tpr@0.01fpr'))} |")
    lines += ["", "Per-depth AUROC of the probe at the best layer:", "", "| depth | AUROC [95% CI] | rows |",
              "|---|---|---|"]
    for d, s in zip(sweep["depths"], sweep["per_depth"]["probe"][i]):
        lines.append(f"| {d} | {_ci(s.get('auroc')) if s else '– (one class)'} | {s['n'] if s else 0} |")
    th = sweep.get("best", {}).get("threshold", {})
    if th:
        lines += ["", f"Per-answer threshold (answer = max over stored depths) at target FPR "
                      f"{sweep['best'].get('target_fpr')} on {th.get('n_controls', '?')} out-of-fold benign answers: "
                      f"{th.get('threshold', float('nan')):.4f} (per-answer TPR {th.get('tpr', float('nan')):.3f}; "
                      f"its FPR {th.get('fpr', float('nan')):.3f} is in-sample, measured on the answers that chose it). "
                      "The guard's threshold and held-out rates are in the section above."]
    d = sweep.get("best", {}).get("probe_minus_ngram_auroc")
    if d:
        lines += ["", f"Probe − n-gram AUROC (out-of-fold, same folds): {d['value']:+.3f} [{d['lo']:+.3f}, "
                      f"{d['hi']:+.3f}]."]
    for note in sweep.get("notes", []):
        lines.append(f"- note: {note}")
    for name, caption in (("layer_depth_auroc.png", "Layer × depth AUROC"), ("layer_sweep.png", "Layer sweep"),
                          ("depth_curve.png", "Depth curve at the best layer"),
                          ("score_hist.png", "Out-of-fold scores")):
        fig = _figure(sweep_dir / name, figures, name)
        if fig:
            lines += ["", f"![{caption}]({fig})"]
    return lines + [""]


def _split_line(split) -> str:
    if not split:
        return "Split: not recorded."
    parts = split.items() if isinstance(split, dict) and "harmful" in split else [("prompts", split)]
    out = []
    for name, sp in parts:
        if isinstance(sp, str):
            out.append(f"{name}: {sp}")
        else:
            out.append(f"{name}: {sp['n_eval']} evaluated, {sp['excluded']} of {sp['n_candidates']} excluded as "
                       f"seen in training/calibration ({sp['status']})")
    return "Split — " + "; ".join(out) + "."


def _eval_sections(eval_dirs: dict[str, Path], figures: Path) -> list[str]:
    lines: list[str] = []
    dp = _load(eval_dirs["deep-prefill"] / "deep_prefill.json") if "deep-prefill" in eval_dirs else None
    if dp:
        names = {"base": "base (keyword)", "base_prob": "base (prob)", "rk": "ADA-RK (keyword)",
                 "rk_prob": "ADA-RK (prob)", "lp": "ADA-LP"}
        ctrl = dp.get("control_curves") or {}
        cols = [(dp["curves"], det, names.get(det, det)) for det in dp["curves"]]
        cols += [(ctrl, det, f"{names.get(det, det)} on benign control") for det in ("rk", "lp") if det in ctrl]
        lines += ["## Deep-prefill attack: refusal / detection vs depth (held-out test prompts)", "",
                  _split_line(dp.get("split")), "",
                  "| depth | " + " | ".join(c[2] for c in cols) + " |", "|---" * (1 + len(cols)) + "|"]
        for k, depth in enumerate(dp["depths"]):
            cells = [_ci(curves[det][k], 2) for curves, det, _ in cols]
            lines.append(f"| {depth} | " + " | ".join(cells) + " |")
        if dp.get("lp_auroc_vs_control"):
            lines += ["", "ADA-LP score AUROC, harmful deep prefills vs benign prompts after the same kind of forced "
                          "opener (the matched-style control):", "", "| depth | AUROC [95% CI] | answers |",
                      "|---|---|---|"]
            for r in dp["lp_auroc_vs_control"]:
                cell = "–" if r["auroc"] is None else f"{r['auroc']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}]"
                lines.append(f"| {r['depth']} | {cell} | {r['n']} |")
        judge = dp.get("judge") or {}
        if isinstance(judge, dict):
            judge = (f"{judge.get('rule', '?')} match ({len(judge.get('phrases', []))} refusal phrases, family "
                     f"{judge.get('family', '?')}) in the first {judge.get('window', '?')} characters")
        lines += ["", f"Refusal judge: {judge}. Base = the model continuing the prefill by itself; ADA-RK = "
                      "re-injected header + greedy lookahead; ADA-LP = probe at the best layer, its threshold."]
        fig = _figure(eval_dirs["deep-prefill"] / "deep_prefill.png", figures, "deep_prefill.png")
        if fig:
            lines += ["", f"![Refusal vs depth]({fig})"]
        lines.append("")
    orf = _load(eval_dirs["over-refusal"] / "over_refusal.json") if "over-refusal" in eval_dirs else None
    if orf:
        lines += ["## Over-refusal on benign prompts (model's own answers, held-out test prompts)", "",
                  _split_line(orf.get("split")) + " A defence's rate here is its per-answer false-alarm rate (fires "
                  f"at any check, stride {orf.get('guard_config', {}).get('stride')} plus the final check).", "",
                  "| group | " +
                  " | ".join(orf["rates"]["all"]) + " |", "|---" * (1 + len(orf["rates"]["all"])) + "|"]
        for group, rates in orf["rates"].items():
            lines.append(f"| {group} | " + " | ".join(_ci(rates[k], 2) for k in orf["rates"]["all"]) + " |")
        fig = _figure(eval_dirs["over-refusal"] / "over_refusal.png", figures, "over_refusal.png")
        if fig:
            lines += ["", f"![Over-refusal]({fig})"]
        lines.append("")
    cost = _load(eval_dirs["cost"] / "cost.json") if "cost" in eval_dirs else None
    if cost:
        lines += ["## Cost", "", "| context | decode step (ms) | check / decode | early-exit check / decode |",
                  "|---|---|---|---|"]
        for r in cost.get("latency", []):
            lines.append(f"| {r['context_len']} | {r['decode_ms']:.1f} | {r['check_vs_decode']:.2f} | "
                         f"{r['early_exit_vs_decode']:.2f} |")
        lines += ["", "| stride | piggyback | early exit | end-to-end slowdown |", "|---|---|---|---|"]
        for r in cost.get("slowdown", []):
            lines.append(f"| {r['stride']} | {r['piggyback']} | {r.get('early_exit', False)} | {r['slowdown']:+.1%} |")
        lines.append("")
    return lines


def write_report(root: Path, cfg: Any, *, store: Path, sweep_dir: Path, probes_dir: Path,
                 eval_dirs: dict[str, Path], timings: dict[str, dict]) -> Path:
    """Write ``<root>/report.md`` (+ ``figures/`` and ``results.json``); returns the report path."""
    figures = root / "figures"
    sweep = _load(sweep_dir / "sweep.json")
    probes = _load(Path(probes_dir) / "probeset.json")
    uses_corpus = getattr(cfg, "uses_corpus", False)
    data = f"corpus spec {cfg.spec}" if uses_corpus else f"data: {', '.join(cfg.data)}"
    lines = [f"# Safety-Token study: {cfg.model}", "",
             f"anydepth {interp.__version__}, preset {getattr(cfg, 'preset', '-')}; {data}; store `{store}`; "
             f"probes `{probes_dir}`.", ""]
    if getattr(cfg, "fallback", None):
        lines += [f"**The public sets were unavailable ({cfg.fallback}); this run used the built-in 80-prompt "
                  "twin set instead of the corpus recipe.**", ""]
    goal = targets(sweep, probes, getattr(cfg, "target_fpr", None))
    lines += _targets_section(goal)
    if sweep:
        lines += _loso_section(sweep)
    lines += _probes_section(probes)
    if sweep:
        lines += _sweep_section(sweep, figures, sweep_dir)
    lines += _eval_sections(eval_dirs, figures)
    lines += ["## Stage timings", "", "| stage | seconds |", "|---|---|"]
    for name, t in timings.items():
        lines.append(f"| {name} | {'reused' if t['reused'] else t['seconds']} |")
    lines += ["", f"Total (this run): {sum(t['seconds'] for t in timings.values()):.0f} s.", "",
              "Configuration:", "", "```json", json.dumps(to_dict(cfg), indent=1), "```", ""]
    report = root / "report.md"
    tmp = report.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, report)
    def rel(path: Path) -> str:  # stage folders relative to the run folder, so a run can be moved
        return os.path.relpath(path, root)

    results = {"config": to_dict(cfg), "timings": timings, "best_layer": sweep and sweep["best_layer"],
               "store": rel(store), "probes": rel(probes_dir), "sweep": rel(sweep_dir),
               "evaluations": {k: rel(v) for k, v in eval_dirs.items()}, "targets": goal}
    (root / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return report
