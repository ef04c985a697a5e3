"""Deep-prefill attack: force the first d tokens of a harmful continuation, measure refusal at each depth.

For every harmful prompt a continuation is forced (the records' own responses, or the model's own text
after a prefill-attack opener); the guard feeds the forced tokens between two check depths in one forward
(:mod:`interp.guard.generator`), so the cost is the checks, not the depth. At each depth d of the grid the same cache is probed by
three detectors (each rolled back): ``base`` (the undefended model continues greedily for
``base_lookahead`` tokens; refusal by the keyword rule), ``rk`` (ADA-RK re-injection) and ``lp`` (ADA-LP).

Every rate's denominator is every evaluated prompt: a continuation that ended before depth d counts as what it
did at its end (its final check), and each point says how many such rows it holds (``ended_before``). Intervals
resample prompt groups (:func:`interp.stats.grouped_rate`).

Only prompts the probe set was neither trained nor calibrated on are used (their count and the split are
recorded; one record per prompt). The matched-style control arm continues the benign prompts of the same
datasets after the same kind of forced opener: its LP rate is a false-alarm rate per check, and
``lp_auroc_vs_control`` says whether the probe separates harmfulness rather than the forced style. The result
says whether the two arms' forced text comes from the same generator (``control_matched``); text written by
another model is labelled not matched. Refusal is judged by both rules (keyword, refusal-opener probability).
"""

from __future__ import annotations

from tqdm import tqdm

from interp import UserError
from interp.evaluate.common import (
    EvalConfig,
    batches,
    eval_groups,
    generators,
    plot_path,
    records_for,
    require,
    setup_run,
    write_result,
)
from interp.guard.generator import GuardedGenerator
from interp.guard.types import GuardConfig
from interp.spans.derive import encode_response, format_prompt_ids
from interp.stats import grouped_rate

DEFAULT_DATASETS = ("demo",)


def _continuations(gm, spans, cfg: EvalConfig, rows, max_depth: int) -> list[list[int]]:
    """Token ids of the forced continuation of each ``(prompt_ids, record)``."""
    if cfg.continuation == "dataset":
        out = [encode_response(gm.tokenizer, p, r.response or "") for p, r in rows]
        require(any(out), "the records have no responses; use --continuation prefill")
        return out
    openers = []
    for p, r in rows:
        text = (r.meta or {}).get("target") or cfg.opener
        openers.append(encode_response(gm.tokenizer, p, text))
    out = []
    # the generator installs its fast-linear patch on the model; leaving the block uninstalls it, also on error
    with GuardedGenerator(gm.model, gm.tokenizer, spans, GuardConfig(mode="none", max_new_tokens=max_depth)) as gen:
        for chunk in tqdm(list(batches(list(range(len(rows))), cfg.batch_size)), desc="prefill continuations"):
            res = gen.generate([rows[i][0] for i in chunk], forced=[openers[i] for i in chunk])
            out += [r.generated_ids for r in res]
    return out


def _run_arm(gen, rows, conts, recs, cfg: EvalConfig, desc: str) -> list[dict]:
    per_row = []
    groups = eval_groups(recs)
    for chunk in tqdm(list(batches(list(range(len(rows))), cfg.batch_size)), desc=desc):
        res = gen.generate([rows[i][0] for i in chunk], forced=[conts[i] for i in chunk], forced_only=True)
        for i, r in zip(chunk, res):
            per_row.append({"id": rows[i][1].id, "dataset": recs[i][0], "label": rows[i][1].label,
                            "group": groups[i], "n_tokens": len(conts[i]),
                            "checks": [{"depth": c.depth, "detector": c.detector, "flagged": c.flagged,
                                        "score": c.score, "lookahead": c.lookahead} for c in r.checks]})
    return per_row


def check_at(row: dict, detector: str, depth: int) -> tuple[dict | None, bool]:
    """The ``detector`` check of a row that stands for ``depth``: the check at that depth, or, when the
    continuation ended before it, the final check at its end (what the row did); and whether it ended before."""
    checks = [c for c in row["checks"] if c["detector"] == detector]
    at = [c for c in checks if c["depth"] == depth]
    if at:
        return at[0], False
    if row["n_tokens"] < depth:
        end = [c for c in checks if c["depth"] == row["n_tokens"]]
        return (end[0] if end else None), True
    return None, False


def _curves(per_row: list[dict], detectors, depths, prob_threshold: float) -> dict:
    """Rate per detector and depth over every row (grouped CIs); ``<det>_prob`` = the same check judged by the
    probability rule. A row that ended before a depth counts with its final check (``ended_before``)."""
    curves = {}
    for det in detectors:
        for judge in ("keyword", "prob") if det in ("base", "rk") else ("probe",):
            name = det if judge != "prob" else f"{det}_prob"
            curves[name] = []
            for d in depths:
                hits, groups, ended, missing = [], [], 0, 0
                for row in per_row:
                    c, before = check_at(row, det, d)
                    if c is None:
                        missing += 1
                        continue
                    ended += before
                    hits.append(c["flagged"] if judge != "prob" else (c["score"] or 0.0) >= prob_threshold)
                    groups.append(row["group"])
                require(missing == 0, f"{missing} row(s) have no {det} check standing for depth {d}: the guard's "
                                      "final check did not run (an internal error: please report it)")
                curves[name].append({"depth": d, **grouped_rate(hits, groups), "ended_before": ended})
    return curves


def _lp_auroc(harmful: list[dict], benign: list[dict], depths) -> list[dict]:
    """Per depth: AUROC of the ADA-LP score, harmful deep prefills vs matched-style benign ones (CI over prompt
    groups); rows that ended before the depth enter with their final check."""
    import numpy as np

    from interp.probes.metrics import summarize

    out = []
    for d in depths:
        s, y, g = [], [], []
        for lab, rows in ((1, harmful), (0, benign)):
            for row in rows:
                c, _ = check_at(row, "lp", d)
                if c is not None and c["score"] is not None:
                    s.append(c["score"]), y.append(lab), g.append(row["group"])
        if len(set(y)) < 2:
            out.append({"depth": d, "auroc": None, "lo": None, "hi": None, "n": len(y)})
            continue
        m = summarize(np.array(s), np.array(y), np.array(g), n_boot=500, seed=0, fprs=())
        out.append({"depth": d, "auroc": m["auroc"]["value"], "lo": m["auroc"]["lo"], "hi": m["auroc"]["hi"],
                    "n": len(y)})
    return out


def _matching(harm: list, ben: list, cfg: EvalConfig) -> dict:
    """Whether the control arm's forced text has the harmful arm's generator(s)."""
    h, b = sorted(set(generators(harm, cfg.continuation))), sorted(set(generators(ben, cfg.continuation)))
    matched = h == b and not any("unknown" in x for x in h)
    return {"control_matched": matched, "harmful_generators": h, "control_generators": b,
            "control_note": "same generator as the harmful arm" if matched else
            "NOT MATCHED: the control arm's text comes from another generator, so a difference between the arms "
            "may be the writer's style rather than harmfulness"}


def run_deep_prefill(cfg: EvalConfig) -> dict:
    gm, spans, probes = setup_run(cfg)
    depths = sorted(set(int(d) for d in cfg.depths))
    require(depths and depths[0] >= 0, "--depths must be non-negative")
    harm, split = records_for(cfg, DEFAULT_DATASETS, "harmful", probes)
    ben = []
    if cfg.control_arm:
        try:
            ben, split_b = records_for(cfg, DEFAULT_DATASETS, "benign", probes)
            split = {"harmful": split, "benign_control": split_b}
        except UserError as err:
            split = {"harmful": split, "benign_control": f"skipped: {err}"}
    detectors = ("base", "rk") + (("lp",) if probes is not None else ())
    gcfg = GuardConfig(mode="rk", stride=10**9, early_checks=tuple(d for d in depths if d > 0),
                       check_at_start=0 in depths, final_check=True, lookahead=cfg.lookahead, matcher=cfg.matcher,
                       threshold=cfg.threshold, max_new_tokens=max(max(depths), 1), buffer=False)
    gen = GuardedGenerator(gm.model, gm.tokenizer, spans, gcfg, probes, model_id=gm.model_id,
                           weights_sha256=gm.weights_sha256, detectors=detectors, halt=False,
                           base_lookahead=cfg.base_lookahead, per_answer=False, prob_scores=True,
                           defer_final_checks=True)
    arms = {}
    with gen:
        for arm, part in (("harmful", harm), ("benign_control", ben)):
            if not part:
                continue
            rows = [(format_prompt_ids(gm.tokenizer, r.prompt), r) for _, r in part]
            conts = _continuations(gm, spans, cfg, rows, max(depths))
            arms[arm] = _run_arm(gen, rows, conts, part, cfg, f"deep-prefill ({arm})")
    prob_thr = gen.checker.prob.threshold
    curves = _curves(arms["harmful"], detectors, depths, prob_thr)
    result = {"mode": "deep-prefill", "model": gm.provenance, "spans": spans.to_dict(), "depths": depths,
              "detectors": list(detectors), "split": split, **(_matching(harm, ben, cfg) if ben else {}),
              "judges": {"keyword": gen.checker.keyword.describe(), "prob": gen.checker.prob.describe()},
              "judge": gen.checker.keyword.describe(),
              "lp_threshold": getattr(gen.checker, "threshold", None), "curves": curves, "rows": arms["harmful"],
              "rule": "per check at each depth over every prompt (a curve point is one check; a continuation that "
                      "ended before the depth counts with its final check; --aggregate applies to per-answer runs: "
                      "over-refusal, attacks, the guard); 95% CIs over prompt groups",
              "note": "base = undefended model's own continuation after the prefill; <det>_prob = the same check "
                      "judged by the refusal-opener probability rule; lp skipped when no probe set is given; "
                      "control = benign prompts continued after the same kind of forced opener"}
    if "benign_control" in arms:
        result["control_curves"] = _curves(arms["benign_control"], detectors, depths, prob_thr)
        result["control_rows"] = arms["benign_control"]
        if "lp" in detectors:
            result["lp_auroc_vs_control"] = _lp_auroc(arms["harmful"], arms["benign_control"], depths)
    path = write_result(cfg.out, "deep_prefill", result, cfg)
    _plot(curves, cfg.out, result.get("control_curves"))
    result["path"] = str(path)
    return result


def _plot(curves: dict, out_dir, control: dict | None = None) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    names = {"base": "base (no defence)", "rk": "ADA-RK", "lp": "ADA-LP"}
    series = [(det, pts, "-") for det, pts in curves.items() if not det.endswith("_prob")]
    if control and "lp" in control:
        series.append(("lp", control["lp"], "--"))
    for det, pts, style in series:
        pts = [p for p in pts if p["n"]]
        if not pts:
            continue
        x = [p["depth"] for p in pts]
        label = names.get(det, det) + (" on benign control (false alarms)" if style == "--" else "")
        ax.plot(x, [p["rate"] for p in pts], style, marker="o", label=label)
        ax.fill_between(x, [p["lo"] for p in pts], [p["hi"] for p in pts], alpha=0.2)
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("prefilled harmful tokens (depth)")
    ax.set_ylabel("refusal / detection rate (95% CI over prompts)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend()
    fig.tight_layout()
    fig.savefig(plot_path(out_dir, "deep_prefill"), dpi=120)
    plt.close(fig)
