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


def _sweep_section(sweep: dict, figures: Path, sweep_dir: Path) -> list[str]:
    best = sweep["best_layer"]
    i = sweep["layers"].index(best)
    lines = ["## Probe sweep (grouped 5-fold CV by prompt)", "",
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
        lines += ["", f"Threshold at target FPR {sweep['best'].get('target_fpr')} on out-of-fold benign controls: "
                      f"{th.get('threshold', float('nan')):.4f} (TPR {th.get('tpr', float('nan')):.3f}, "
                      f"FPR {th.get('fpr', float('nan')):.3f})."]
    for note in sweep.get("notes", []):
        lines.append(f"- note: {note}")
    for name, caption in (("layer_depth_auroc.png", "Layer × depth AUROC"), ("layer_sweep.png", "Layer sweep"),
                          ("depth_curve.png", "Depth curve at the best layer"),
                          ("score_hist.png", "Out-of-fold scores")):
        fig = _figure(sweep_dir / name, figures, name)
        if fig:
            lines += ["", f"![{caption}]({fig})"]
    return lines + [""]


def _eval_sections(eval_dirs: dict[str, Path], figures: Path) -> list[str]:
    lines: list[str] = []
    dp = _load(eval_dirs["deep-prefill"] / "deep_prefill.json") if "deep-prefill" in eval_dirs else None
    if dp:
        names = {"base": "base (no defence)", "rk": "ADA-RK", "lp": "ADA-LP"}
        lines += ["## Deep-prefill attack: refusal / detection vs depth", "",
                  "| depth | " + " | ".join(names.get(d, d) for d in dp["curves"]) + " |",
                  "|---" * (1 + len(dp["curves"])) + "|"]
        for k, depth in enumerate(dp["depths"]):
            cells = [_ci(dp["curves"][det][k], 2) for det in dp["curves"]]
            lines.append(f"| {depth} | " + " | ".join(cells) + " |")
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
        lines += ["## Over-refusal on benign prompts (model's own answers)", "", "| group | " +
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
        lines += ["", "| stride | piggyback | end-to-end slowdown |", "|---|---|---|"]
        for r in cost.get("slowdown", []):
            lines.append(f"| {r['stride']} | {r['piggyback']} | {r['slowdown']:+.1%} |")
        lines.append("")
    return lines


def write_report(root: Path, cfg: Any, *, store: Path, sweep_dir: Path, probes_dir: Path,
                 eval_dirs: dict[str, Path], timings: dict[str, dict]) -> Path:
    """Write ``<root>/report.md`` (+ ``figures/`` and ``results.json``); returns the report path."""
    figures = root / "figures"
    sweep = _load(sweep_dir / "sweep.json")
    lines = [f"# Safety-Token study: {cfg.model}", "",
             f"anydepth {interp.__version__}; data: {', '.join(cfg.data)}; store `{store}`; probes `{probes_dir}`.",
             ""]
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
               "evaluations": {k: rel(v) for k, v in eval_dirs.items()}}
    (root / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return report
