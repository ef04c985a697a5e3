"""The study's report: one Markdown page with the figures and the tables, built from the stages' JSON and the
study's result (targets and verdicts are computed in :mod:`interp.study.targets`; this module only formats)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import interp
from interp.formatting import ci, diff, probability, rate
from interp.probes.answers import KIND_NAMES
from interp.probes.calibration import fpr_bound_text
from interp.probes.tables import METHOD_NAMES, heldout_table, loso_table
from interp.study.result import StudyResult, read_json
from interp.study.verdicts import verdict_lines


def _figure(src: Path, figures: Path, caption: str) -> list[str]:
    """The figure ``src`` copied into ``figures/`` and its Markdown lines; none when the stage made no such file."""
    if not src.exists():
        return []
    figures.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, figures / src.name)
    return ["", f"![{caption}](figures/{src.name})"]


def _loso_section(sweep: dict) -> list[str]:
    loso = sweep.get("loso") or {}
    if not loso.get("rows"):
        return ["## Leave-one-source-out", "", *loso_table(loso), ""]
    return ["## Leave-one-source-out (read this first)", "",
            f"Layer {sweep['best_layer']}. Each source is scored by probes trained without it, on the sweep's grouped "
            "folds (so also without its prompt, its twin or a near duplicate). Its AUROC compares its rows with the "
            "other class (within the source when it holds both labels) over pairs scored by **the same fold model** "
            "only, so no number compares two models' scales. The per-answer rate counts every check the guard makes "
            "on each answer, at a threshold set at the target FPR on the *other* sources' own benign answers. The "
            "n-gram baseline runs on the same folds and text; 95% CIs resample prompt groups.", "",
            *loso_table(loso),
            "- The pooled figure (every source's scores on one axis) is kept in `sweep.json` as "
            "`pooled_calibration_diagnostic`: it says how well one threshold fits every source, not how well the "
            "probe ranks.", ""]


def _readout_loso_section(path: Path) -> list[str]:
    """Leave one source out at the probe set's own readout (the guard's layers, stacked when they are)."""
    from interp.probes.transfer import ReadoutLoso

    loso = ReadoutLoso.load(path)
    what = f"layers {', '.join(map(str, loso.readout['layers']))}" + (
        ", one stacked regression" if loso.readout["stacked"] else "")
    return ["## Leave-one-source-out at the deployed readout", "",
            f"The probe set's readout ({what}), refitted on the same grouped folds without each held-out source; "
            f"otherwise as above (`{path}`).", "", *loso.table(), ""]


def _own_first(by_source: dict | None) -> list[tuple[str, dict]]:
    """Per-source entries, the model's own answers first (JSON files store them sorted by name)."""
    from interp.probes.answers import KINDS

    order = {k: i for i, k in enumerate(KINDS)}
    return sorted((by_source or {}).items(), key=lambda kv: (order.get(kv[1].get("kind"), len(KINDS)), kv[0]))


def _targets_section(t: dict) -> list[str]:
    if not t["depths"]:
        return []
    lines = ["## Targets at depths 25..500", "",
             "Leave-one-source-out: per held-out source, the AUROC over pairs scored by one fold model trained without "
             "that source (and without the row's prompt group), then the mean over sources (worst source beside it), "
             f"at {t.get('loso_readout') or 'the best layer'}; its layers were chosen by cross-validation over "
             "every source (a mild selection). "
             "Held-out test: the probe set (its readout layers) on the test prompts, which set neither the probe nor "
             "the threshold. ADA-LP TPR: harmful test answers whose check at that depth reaches the threshold "
             "calibrated per answer on the calibration prompts' own benign answers. 95% CIs resample prompt groups.",
             "", "| depth | LOSO probe AUROC, mean over sources (worst source; sources and rows at this depth) | "
             "LOSO n-gram AUROC | test probe AUROC | "
             "test n-gram AUROC | ADA-LP TPR per check (harmful test answers) |",
             "|---|---|---|---|---|---|"]
    for d, r in t["depths"].items():
        w, c = r.get("loso_probe_worst"), r.get("loso_probe_count") or {}
        worst = f" ({w['source']} {w['value']:.3f}; {c.get('sources')} sources, {c.get('rows')} rows)" if w else ""
        lines.append(f"| {d} | {ci(r.get('loso_probe'))}{worst} | {ci(r.get('loso_ngram'))} | "
                     f"{ci(r.get('test_probe'))} | {ci(r.get('test_ngram'))} | {rate(r.get('tpr'))} |")
    lines += ["", "The targets (every number held out; `interp.study.targets`):", "",
              *(f"- {line}." for line in verdict_lines(t, calibration=False))]
    if t["fpr"] and t["fpr"].get("rate") is not None:
        ans = t.get("answers") or {}
        by = "; ".join(f"{k} ({v.get('kind', '?')}) {rate(v)}" for k, v in _own_first(t["fpr_by_source"])
                       if v["n"])
        prompts = (f"; prompts with a false alarm on some answer {rate(t['fpr_prompts'], 3)}" if t.get("fpr_prompts")
                   else "")
        lines.append(f"- Per-answer false alarms on held-out {t.get('fpr_population') or 'benign answers'} (the run's "
                     f"calibration target {t['target_fpr']}; every check the guard makes, coverage {ans.get('coverage')}, "
                     f"{ans.get('excluded_incomplete', 0)} incomplete answers excluded): {rate(t['fpr'], 3)}"
                     f"{'' if t['summary']['fpr']['met'] else ' (above the target)'}{prompts}. By source, own answers "
                     f"first: {by}.")
        if t.get("tpr_per_answer"):
            by_kind = t.get("tpr_by_kind") or {}
            kinds = "; ".join(f"{KIND_NAMES[k]} {rate(by_kind[k])}" for k in KIND_NAMES if k in by_kind)
            lines.append(f"- Per-answer detection on held-out harmful answers: {rate(t['tpr_per_answer'])}"
                         + (f". By kind: {kinds}." if kinds else "."))
    return lines + [""]


def _probes_section(probes: dict | None) -> list[str]:
    """Split, calibration and the held-out test numbers recorded in ``probeset.json``."""
    if not probes or not probes.get("split"):
        return []
    sp, cal = probes["split"], probes["thresholds"]["calibration"]
    lines = ["## Split, threshold and held-out test numbers", "",
             "Prompts are split by content group (the same prompt under any dataset or id, twin pairs and near "
             "duplicates stay together): **train** (layer choice by grouped CV, probe fit), **calibration** (the "
             "threshold only) and **test** (every number below and every evaluation further down).", "",
             "| role | prompt groups | harmful rows | benign rows | sources |", "|---|---|---|---|---|"]
    for role in ("train", "calibration", "test"):
        part = sp[role]
        src = ", ".join(f"{k} {v}" for k, v in part["sources"].items())
        lines.append(f"| {role} | {len(part['groups'])} | {part['n_harmful']} | {part['n_benign']} | {src} |")
    sched = probes.get("schedule") or {}
    ans = cal.get("answers") or {}
    kinds = ", ".join(f"{k} {v}" for k, v in (cal.get("kinds") or {}).items())
    lines += ["", f"Threshold {probability(cal['threshold'])}, calibrated **per answer** on {cal['n_answers']} benign answers "
                  f"of the model itself ({kinds}) from {cal['basis']}, for the guard schedule stride "
                  f"{sched.get('stride')}, early checks {sched.get('early_checks')}, final check "
                  f"{sched.get('final_check')}, answers of up to {sched.get('answer_length')} tokens (the guard's "
                  f"max_new_tokens). Every check the guard makes on each answer is scored ({ans.get('checks', '?')} "
                  f"checks; {ans.get('excluded_incomplete', 0)} answers that stop early without ending excluded); a "
                  "check fires when its score reaches the threshold (float64 >=) and the guard fires on an answer "
                  f"under its rule ({sched.get('aggregation', 'any check')}). "
                  + (f"Target per-answer FPR {cal['target_fpr']}" if cal["resolved"] else
                     f"**{cal['n_answers']} calibration answers cannot resolve the target per-answer FPR "
                     f"{cal['target_fpr']}** (that needs ≥ {cal['answers_needed']}); the threshold sits above every "
                     f"calibration answer and the finest FPR this set resolves is {cal['resolution']:.2f}")
                  + (f"; {bound}." if (bound := fpr_bound_text(cal)) else ".")]
    test = (probes.get("metrics") or {}).get("test")
    if test:
        pa = test["per_answer"]
        combine = probes.get("combine") or []
        how = ("one stacked regression on layers" if (probes.get("metrics") or {}).get("readout", {}).get("stacked")
               else "mean logit of layers")
        readout = (f"multi-layer probe ({how} {', '.join(map(str, combine))}; baselines at layer "
                   f"{combine[-1]})" if combine else f"probe at layer {probes['best_layer']}")
        lines += ["", f"Held-out test prompts ({test['n_prompts']} groups; {test['n_harmful']} harmful and "
                      f"{test['n_benign']} benign answers), {readout} beside baselines fitted on the same training "
                      "prompts:", "",
                  *heldout_table(test)]
        diffs = test.get("probe_minus_baseline_auroc") or {}
        d = test.get("probe_minus_ngram_auroc")
        if d:
            lines += ["", f"Probe − n-gram AUROC: {diff(d)} — "
                          + ("the probe beats the text-only baseline." if d["beats"] else
                             "**no evidence that the probe beats the text-only baseline** on these prompts.")]
        lost = [METHOD_NAMES[m] for m, d in diffs.items() if m != "shuffled" and not d["beats"]]
        if lost:
            lines += ["", "The probe does **not** beat (CI of the difference includes 0): " + ", ".join(lost)
                      + ". A Safety-Token claim on these prompts needs it to."]
        lines += ["", f"Per answer at the frozen threshold (test answers, every check the guard makes; CIs over prompt "
                      f"groups): TPR {rate(pa['tpr'])}; FPR on {pa.get('fpr_population', 'benign answers')} "
                      f"{rate(pa['fpr'])}; on every benign answer, third-party text included, "
                      f"{rate(pa.get('fpr_all_benign'))}."]
        if pa.get("auroc_own_vs_harmful"):
            lines += ["", f"Per-answer AUROC, the model's own benign answers against harmful ones (test answers, whatever "
                          f"the threshold): {ci(pa['auroc_own_vs_harmful'])}."]
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
        lines.append(f"| {m} | {ci(s.get('auroc'))} | {ci(s.get('acc'))} | {ci(s.get('tpr@0.01fpr'))} |")
    lines += ["", "Per-depth AUROC of the probe at the best layer:", "", "| depth | AUROC [95% CI] | rows |",
              "|---|---|---|"]
    for d, s in zip(sweep["depths"], sweep["per_depth"]["probe"][i]):
        lines.append(f"| {d} | {ci(s.get('auroc')) if s else '– (one class)'} | {s['n'] if s else 0} |")
    th = sweep.get("best", {}).get("threshold") or {}
    if th:
        lines += ["", f"Per-answer threshold (every check the guard makes) at target FPR "
                      f"{sweep['best'].get('target_fpr')} on {th.get('n_controls', '?')} out-of-fold own benign answers: "
                      f"{probability(th['threshold'])} (per-answer TPR {rate(th.get('tpr'))}; its FPR {rate(th.get('fpr'))} is "
                      "in-sample, measured on the answers that chose it). The guard's threshold and held-out rates are "
                      "in the section above."]
    d = sweep.get("best", {}).get("probe_minus_ngram_auroc")
    if d:
        lines += ["", f"Probe − n-gram AUROC (out-of-fold, same folds): {diff(d)}."]
    for note in sweep.get("notes", []):
        lines.append(f"- note: {note}")
    for name, caption in (("layer_depth_auroc.png", "Layer × depth AUROC"), ("layer_sweep.png", "Layer sweep"),
                          ("depth_curve.png", "Depth curve at the best layer"),
                          ("score_hist.png", "Out-of-fold scores")):
        lines += _figure(sweep_dir / name, figures, caption)
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


def _eval_sections(eval_dirs: dict[str, Path], figures: Path, offline_fpr: dict | None = None) -> list[str]:
    lines: list[str] = []
    dp = read_json(eval_dirs["deep-prefill"] / "deep_prefill.json") if "deep-prefill" in eval_dirs else None
    if dp:
        names = {"base": "base (keyword)", "base_prob": "base (prob)", "rk": "ADA-RK (keyword)",
                 "rk_prob": "ADA-RK (prob)", "lp": "ADA-LP"}
        ctrl = dp.get("control_curves") or {}
        cols = [(dp["curves"], det, names.get(det, det)) for det in dp["curves"]]
        cols += [(ctrl, det, f"{names.get(det, det)} on benign control") for det in ("rk", "lp") if det in ctrl]
        ended = [p.get("ended_before", 0) for p in dp["curves"][next(iter(dp["curves"]))]]
        matched = dp.get("control_matched")
        lines += ["## Deep-prefill attack: refusal / detection vs depth (held-out test prompts)", "",
                  _split_line(dp.get("split")), "",
                  "Every prompt counts at every depth: a continuation that ended before the depth counts with its "
                  "final check (the `ended` column says how many harmful ones did). Rates per check; 95% CIs over "
                  "prompt groups.", ""]
        if matched is not None:
            lines += [("Control arm: same generator as the harmful arm." if matched else
                       f"**Control arm not matched**: the harmful text comes from {', '.join(dp['harmful_generators'])}"
                       f", the control text from {', '.join(dp['control_generators'])}; a difference between the "
                       "arms may be the writer's style."), ""]
        lines += ["| depth | ended | " + " | ".join(c[2] for c in cols) + " |", "|---" * (2 + len(cols)) + "|"]
        for k, depth in enumerate(dp["depths"]):
            cells = [ci(curves[det][k], 2) for curves, det, _ in cols]
            lines.append(f"| {depth} | {ended[k]} | " + " | ".join(cells) + " |")
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
                      "re-injected header + greedy lookahead; ADA-LP = the probe set's readout (its layers) at its "
                      "threshold."]
        lines += [*_figure(eval_dirs["deep-prefill"] / "deep_prefill.png", figures, "Refusal vs depth"), ""]
    orf = read_json(eval_dirs["over-refusal"] / "over_refusal.json") if "over-refusal" in eval_dirs else None
    if orf:
        gc = orf.get("guard_config", {})
        lines += ["## Over-refusal on benign prompts (model's own answers, held-out test prompts)", "",
                  _split_line(orf.get("split")) + " A defence's rate here is its per-answer false-alarm rate as "
                  f"deployed: the live guard, stride {gc.get('stride')} plus the final check, answers of up to "
                  f"{gc.get('max_new_tokens')} tokens; 95% CIs over prompt groups.", "",
                  "| group | " +
                  " | ".join(orf["rates"]["all"]) + " |", "|---" * (1 + len(orf["rates"]["all"])) + "|"]
        for group, rates in orf["rates"].items():
            lines.append(f"| {group} | " + " | ".join(ci(rates[k], 2) for k in orf["rates"]["all"]) + " |")
        live = (orf["rates"].get("all") or {}).get("lp")
        if live and offline_fpr:
            lines += ["", f"ADA-LP per-answer false alarms, live on these prompts {rate(live)} vs offline on the "
                          f"probe set's held-out own answers {rate(offline_fpr)} (the same checks and threshold; "
                          "different prompts, and the corpus answers were decoded in the generation dtype)."]
        lines += [*_figure(eval_dirs["over-refusal"] / "over_refusal.png", figures, "Over-refusal"), ""]
    cost = read_json(eval_dirs["cost"] / "cost.json") if "cost" in eval_dirs else None
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


def _corpus_line(corpus_dir: Path | None) -> list[str]:
    """What the corpus build kept and dropped (label hygiene), from its config."""
    config = read_json(corpus_dir / "continuations.config.json") if corpus_dir else None
    summary = (config or {}).get("summary") or config or {}
    entries = summary.get("entries") or []
    if not entries:
        return []
    recovered = sum(e.get("dropped_recovered_refusals", 0) for e in entries)
    ref = [e for e in entries if "dropped_not_refusals" in e]
    kept = sum(e["rows"] for e in ref)
    planned = sum(e["planned"] for e in ref)
    line = (f"Corpus: {summary.get('rows', sum(e['rows'] for e in entries))} rows; {recovered} harmful prefill "
            "continuations that recovered into a refusal were dropped (a harmful label on a refusal)")
    if ref:
        line += f"; the model refused {kept} of {planned} harmful prompts, kept as hard negatives (benign)"
    ins = [e for e in entries if "dropped_not_refusals_or_recovered" in e]
    if ins:
        line += (f"; {sum(e['rows'] for e in ins)} insertion rows from {sum(e['planned'] for e in ins)} prompts "
                 "(an own refusal, or an own answer to a benign prompt, a harmful span inserted, labelled per depth)")
    return [line + ".", ""]


def write_report(root: Path, result: StudyResult, *, corpus_dir: Path | None = None) -> Path:
    """Write ``<root>/report.md`` (and copy the figures into ``figures/``) from a study's result; returns its path."""
    cfg, figures = result.config, root / "figures"
    sweep_dir, probes_dir = result.path(result.sweep), result.path(result.probes)
    sweep, probes = read_json(sweep_dir / "sweep.json"), read_json(probes_dir / "probeset.json")
    uses_corpus = str(cfg.get("spec")).lower() != "none"
    data = f"corpus spec {cfg['spec']}" if uses_corpus else f"data: {', '.join(cfg['data'])}"
    lines = [f"# Safety-Token study: {cfg['model']}", "",
             f"anydepth {interp.__version__}, preset {cfg.get('preset', '-')}; {data}; forward dtype "
             f"{cfg.get('dtype', '-')} (extraction and evaluations); store `{result.path(result.store)}`; probes "
             f"`{probes_dir}`.", ""]
    if cfg.get("fallback"):
        lines += [f"**The public sets were unavailable ({cfg['fallback']}); this run used the built-in 80-prompt "
                  "twin set instead of the corpus recipe.**", ""]
    lines += _corpus_line(corpus_dir)
    lines += _targets_section(result.targets)
    if sweep:
        lines += _loso_section(sweep)
    if result.loso:
        lines += _readout_loso_section(result.path(result.loso) / "loso.json")
    lines += _probes_section(probes)
    if sweep:
        lines += _sweep_section(sweep, figures, sweep_dir)
    eval_dirs = {k: result.path(v) for k, v in result.evaluations.items()}
    lines += _eval_sections(eval_dirs, figures, result.targets.get("fpr"))
    lines += ["## Stage timings", "", "| stage | seconds |", "|---|---|"]
    for name, t in result.timings.items():
        lines.append(f"| {name} | {'reused' if t['reused'] else t['seconds']} |")
    lines += ["", f"Total (this run): {sum(t['seconds'] for t in result.timings.values()):.0f} s.", "",
              "Configuration:", "", "```json", json.dumps(cfg, indent=1), "```", ""]
    report = root / "report.md"
    tmp = report.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, report)
    return report
