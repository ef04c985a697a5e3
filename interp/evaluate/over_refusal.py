"""Over-refusal: how often each defence fires on benign prompts while the model gives its own answer.

Reports, per dataset and overall (95% CIs over prompt groups): the undefended model's own refusal rate (keyword
rule on its answer) and the rate at which ADA-RK / ADA-LP fire under the guard's rule (every ``stride`` tokens +
at the end, answers of up to ``max_new_tokens``: by default the answer length the probe set was calibrated at),
i.e. each defence's per-answer false-alarm rate as deployed. The control arm (on by default) answers the same
prompts again after a forced affirmative opener, the style a probe trained on prefill attacks may have learned:
its rows are reported as ``<dataset> + forced opener``.
"""

from __future__ import annotations

from interp.evaluate.common import (
    EvalConfig,
    plot_path,
    records_for,
    require,
    setup_run,
    write_result,
)
from interp.evaluate.observe import observe
from interp.stats import grouped_rate

DEFAULT_DATASETS = ("xstest_safe", "jbb_benign", "alpaca_eval")


def summarise(rows: list[dict], detectors: list[str], keys: dict[str, str]) -> dict:
    """Rates per group: ``all`` (the model's own answers), each dataset, and with a control arm
    ``all + forced opener`` and each ``<dataset> + forced opener``."""
    own = [r for r in rows if not r["dataset"].endswith(" + forced opener")]
    groups = {"all": own}
    if len(own) < len(rows):
        groups["all + forced opener"] = [r for r in rows if r["dataset"].endswith(" + forced opener")]
    for r in rows:
        groups.setdefault(r["dataset"], []).append(r)
    return {g: {label: grouped_rate([bool(r[key]) for r in rs], [r["group"] for r in rs]) for label, key in keys.items()}
            for g, rs in groups.items()}


def run_over_refusal(cfg: EvalConfig) -> dict:
    gm, spans, probes = setup_run(cfg)
    recs, split = records_for(cfg, DEFAULT_DATASETS, "benign", probes)
    require(bool(recs), "no benign records in the chosen datasets")
    rows, meta = observe(gm, spans, probes, cfg, recs, "over-refusal")
    if cfg.control_arm:  # matched style: the same prompts, answered after a forced affirmative opener
        rows += observe(gm, spans, probes, cfg, recs, "over-refusal (forced opener)", opener=True)[0]
    meta["split"] = split
    keys = {"base": "base_refused", **{d: f"{d}_fired" for d in meta["detectors"]}}
    rates = summarise(rows, meta["detectors"], keys)
    result = {"mode": "over-refusal", "model": gm.provenance, "spans": spans.to_dict(), **meta, "rates": rates,
              "rows": rows}
    path = write_result(cfg.out, "over_refusal", result, cfg)
    bar_plot(rates, "over_refusal", "fires on benign prompts (95% CI over prompts)", cfg.out)
    result["path"] = str(path)
    return result


def bar_plot(rates: dict, name: str, ylabel: str, out_dir) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    groups = list(rates)
    labels = list(next(iter(rates.values())))
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(groups), 4))
    width = 0.8 / len(labels)
    for j, lab in enumerate(labels):
        x = np.arange(len(groups)) + j * width
        vals = [rates[g][lab]["rate"] or 0.0 for g in groups]
        err = [[max(0.0, v - (rates[g][lab]["lo"] or 0.0)) for g, v in zip(groups, vals)],
               [max(0.0, (rates[g][lab]["hi"] or 0.0) - v) for g, v in zip(groups, vals)]]
        ax.bar(x, vals, width, yerr=err, capsize=3, label=lab)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups, rotation=20)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    ax.legend()
    fig.tight_layout()
    fig.savefig(plot_path(out_dir, name), dpi=120)
    plt.close(fig)
