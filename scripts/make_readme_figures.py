"""Redraw the README's overview figure (docs/demo_overview.png) from a finished `anydepth demo` run.

Left: out-of-fold probe AUROC per (layer, depth) from the sweep; right: refusal / detection vs prefilled depth on
the held-out test prompts for the model alone, ADA-RK and ADA-LP, and the defences' false alarms on the
benign control arm (dashed; the report says whether its text is style-matched), with the report's 95% CIs over prompt groups.

    python scripts/make_readme_figures.py [--run runs/demo/qwen2.5-coder-0.5b-instruct] [--out docs/demo_overview.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

NAMES = {"base": "model alone (no defence)", "rk": "ADA-RK (re-inject header)", "lp": "ADA-LP (linear probe)"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/demo/qwen2.5-coder-0.5b-instruct", help="demo output folder")
    ap.add_argument("--out", default="docs/demo_overview.png")
    args = ap.parse_args()
    run = Path(args.run)
    results = json.loads((run / "results.json").read_text())
    sweep = json.loads((run / results["sweep"] / "sweep.json").read_text())
    deep = json.loads((run / results["evaluations"]["deep-prefill"] / "deep_prefill.json").read_text())

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.1, 1]})
    grid = np.array([[np.nan if s is None else s["auroc"]["value"] for s in row]
                     for row in sweep["per_depth"]["probe"]], float)
    im = ax0.imshow(grid, aspect="auto", origin="lower", cmap="viridis", vmin=0.5, vmax=1.0)
    ax0.set_xticks(range(len(sweep["depths"])), [str(d) for d in sweep["depths"]], fontsize=7)
    step = max(1, len(sweep["layers"]) // 12)
    ax0.set_yticks(range(0, len(sweep["layers"]), step), [str(v) for v in sweep["layers"]][::step], fontsize=7)
    ax0.set(xlabel="depth (response tokens before the injected header)", ylabel="layer",
            title=f"Probe AUROC, out-of-fold (grouped 5-fold CV), best layer {sweep['best_layer']}")
    fig.colorbar(im, ax=ax0, label="AUROC")
    series = [(pts, NAMES.get(det, det), "-") for det, pts in deep["curves"].items() if not det.endswith("_prob")]
    control = deep.get("control_curves") or {}
    series += [(control[det], f"{NAMES[det]} on benign control", "--") for det in ("rk", "lp") if det in control]
    for pts, label, style in series:
        pts = [p for p in pts if p["n"]]
        x = [p["depth"] for p in pts]
        (line,) = ax1.plot(x, [p["rate"] for p in pts], style, marker="o", label=label)
        ax1.fill_between(x, [p["lo"] for p in pts], [p["hi"] for p in pts], color=line.get_color(), alpha=0.12)
    ax1.set_xscale("symlog", linthresh=10)
    ax1.set(xlabel="prefilled harmful tokens (depth)", ylabel="refused / flagged (95% CI)", ylim=(-0.02, 1.02),
            title=f"Deep prefill on {deep['split']['harmful']['n_eval']} held-out harmful prompts\n"
                  "(dashed: false alarms on the benign control arm)")
    ax1.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"{deep['model'].get('model_id', '')}: {sweep.get('n_examples')} responses", fontsize=10)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
