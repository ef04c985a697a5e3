"""Deep-prefill attack: force the first d tokens of a harmful continuation, measure refusal at each depth.

For every harmful prompt a continuation is forced (the records' own responses, or the model's own text
after a prefill-attack opener); the guard feeds the forced tokens between two check depths in one forward
(:mod:`interp.guard`), so the cost is the checks, not the depth. At each depth d of the grid the same cache is probed by
three detectors (each rolled back): ``base`` (the undefended model continues greedily for
``base_lookahead`` tokens; refusal by the keyword rule), ``rk`` (ADA-RK re-injection) and ``lp`` (ADA-LP).
Depths beyond a continuation's end are not measured (n shrinks; reported per depth).
"""

from __future__ import annotations

from tqdm import tqdm

from interp.evaluate.common import (
    EvalConfig,
    batches,
    plot_path,
    records_for,
    require,
    setup_run,
    wilson,
    write_result,
)
from interp.guard import GuardConfig, GuardedGenerator
from interp.templates import encode_response, format_prompt_ids

DEFAULT_DATASETS = ("demo",)


def _continuations(gm, spans, cfg: EvalConfig, rows, max_depth: int) -> list[list[int]]:
    """Token ids of the forced continuation of each ``(prompt_ids, record)``."""
    if cfg.continuation == "dataset":
        out = [encode_response(gm.tokenizer, p, r.response or "") for p, r in rows]
        require(any(out), "the records have no responses; use --continuation prefill")
        return out
    gen = GuardedGenerator(gm.model, gm.tokenizer, spans, GuardConfig(mode="none", max_new_tokens=max_depth))
    openers = []
    for p, r in rows:
        text = (r.meta or {}).get("target") or cfg.opener
        openers.append(encode_response(gm.tokenizer, p, text))
    out = []
    for chunk in batches(list(range(len(rows))), cfg.batch_size):
        res = gen.generate([rows[i][0] for i in chunk], forced=[openers[i] for i in chunk])
        out += [r.generated_ids for r in res]
    return out


def run_deep_prefill(cfg: EvalConfig) -> dict:
    gm, spans, probes = setup_run(cfg)
    depths = sorted(set(int(d) for d in cfg.depths))
    require(depths and depths[0] >= 0, "--depths must be non-negative")
    recs = [(name, r) for name, r in records_for(cfg, DEFAULT_DATASETS, "harmful") if r.label == "harmful"]
    require(bool(recs), "no harmful records in the chosen datasets")
    rows = [(format_prompt_ids(gm.tokenizer, r.prompt), r) for _, r in recs]
    conts = _continuations(gm, spans, cfg, rows, max(depths))
    detectors = ("base", "rk") + (("lp",) if probes is not None else ())
    gcfg = GuardConfig(mode="rk", stride=10**9, early_checks=tuple(d for d in depths if d > 0),
                       check_at_start=0 in depths, final_check=False, lookahead=cfg.lookahead, matcher=cfg.matcher,
                       threshold=cfg.threshold, max_new_tokens=max(max(depths), 1), buffer=False)
    gen = GuardedGenerator(gm.model, gm.tokenizer, spans, gcfg, probes, model_id=gm.model_id,
                           weights_sha256=gm.weights_sha256, detectors=detectors, halt=False,
                           base_lookahead=cfg.base_lookahead)
    per_row = []
    for chunk in tqdm(list(batches(list(range(len(rows))), cfg.batch_size)), desc="deep-prefill"):
        res = gen.generate([rows[i][0] for i in chunk], forced=[conts[i] for i in chunk], forced_only=True)
        for i, r in zip(chunk, res):
            per_row.append({"id": rows[i][1].id, "dataset": recs[i][0], "n_tokens": len(conts[i]),
                            "checks": [{"depth": c.depth, "detector": c.detector, "flagged": c.flagged,
                                        "score": c.score, "lookahead": c.lookahead} for c in r.checks]})
    gen.close()
    curves = {}
    for det in detectors:
        curves[det] = []
        for d in depths:
            hits = [c["flagged"] for row in per_row for c in row["checks"] if c["depth"] == d and c["detector"] == det]
            curves[det].append({"depth": d, **wilson(sum(hits), len(hits))})
    result = {"mode": "deep-prefill", "model": gm.provenance, "spans": spans.to_dict(), "depths": depths,
              "detectors": list(detectors), "judge": gen.checker.keyword.describe(),
              "lp_threshold": getattr(gen.checker, "threshold", None), "curves": curves, "rows": per_row,
              "note": "base = undefended model's own continuation after the prefill (keyword rule); "
                      "lp skipped when no probe set is given"}
    path = write_result(cfg.out, "deep_prefill", result, cfg)
    _plot(curves, cfg.out)
    result["path"] = str(path)
    return result


def _plot(curves: dict, out_dir) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    names = {"base": "base (no defence)", "rk": "ADA-RK", "lp": "ADA-LP"}
    for det, pts in curves.items():
        pts = [p for p in pts if p["n"]]
        if not pts:
            continue
        x = [p["depth"] for p in pts]
        ax.plot(x, [p["rate"] for p in pts], marker="o", label=names.get(det, det))
        ax.fill_between(x, [p["lo"] for p in pts], [p["hi"] for p in pts], alpha=0.2)
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("prefilled harmful tokens (depth)")
    ax.set_ylabel("refusal / detection rate (95% Wilson CI)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend()
    fig.tight_layout()
    fig.savefig(plot_path(out_dir, "deep_prefill"), dpi=120)
    plt.close(fig)
