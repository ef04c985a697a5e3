"""Sweep figures (matplotlib; the library leaves the backend alone, the CLI uses Agg), each written as PNG and SVG: layer sweep with CIs, layer x depth
AUROC heatmap, depth curve at one layer, score histograms, reliability diagram."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

LABELS = {"probe": "Safety-Token probe", "last_token": "last generated token", "prompt": "prompt only (depth 0)",
          "diffmeans": "difference of means", "shuffled": "shuffled-label control"}


def save_figure(fig, prefix: str | Path) -> list[Path]:
    """Write ``<prefix>.png`` and ``<prefix>.svg`` atomically; closes the figure."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ("png", "svg"):
        path = prefix.with_name(f"{prefix.name}.{ext}")
        tmp = path.with_name(path.name + ".tmp")
        fig.savefig(tmp, format=ext, dpi=130, bbox_inches="tight")
        os.replace(tmp, path)
        out.append(path)
    plt.close(fig)
    return out


def _series(summaries: list[dict | None], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    def get(s, k):
        return np.nan if s is None or s[metric][k] is None else s[metric][k]

    return tuple(np.array([get(s, k) for s in summaries], float) for k in ("value", "lo", "hi"))


def plot_layer_sweep(res: dict, prefix: str | Path) -> list[Path]:
    """AUROC and accuracy vs layer with bootstrap CIs, the probe against every baseline."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    layers = np.array(res["layers"])
    for ax, metric in zip(axes, ("auroc", "acc")):
        for m in res["methods"]:
            v, lo, hi = _series(res["per_layer"][m], metric)
            if np.isnan(v).all():
                continue
            (line,) = ax.plot(layers, v, marker="o", ms=3, label=LABELS.get(m, m), lw=2 if m == "probe" else 1)
            ax.fill_between(layers, lo, hi, color=line.get_color(), alpha=0.15)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.axvline(res["best_layer"], color="k", lw=0.8, ls="--")
        ax.set(xlabel="layer", ylabel=metric.upper() if metric == "auroc" else "accuracy", ylim=(0.3, 1.02))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Layer sweep ({res.get('split', {}).get('kind', '')} CV, 95% CI by prompt); best layer "
                 f"{res['best_layer']}")
    return save_figure(fig, prefix)


def plot_layer_depth_heatmap(res: dict, prefix: str | Path, method: str = "probe") -> list[Path]:
    """Out-of-fold AUROC for every (layer, depth)."""
    grid = np.array([_series(row, "auroc")[0] for row in res["per_depth"][method]])
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * grid.shape[1], 1.2 + 0.3 * grid.shape[0]))
    im = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", vmin=0.5, vmax=1.0)
    ax.set_xticks(range(len(res["depths"])), [str(d) for d in res["depths"]], rotation=90, fontsize=7)
    ax.set_yticks(range(len(res["layers"])), [str(v) for v in res["layers"]], fontsize=7)
    ax.set(xlabel="depth (response tokens before the span)", ylabel="layer",
           title=f"AUROC by layer and depth ({LABELS.get(method, method)})")
    fig.colorbar(im, ax=ax, label="AUROC")
    return save_figure(fig, prefix)


def plot_depth_curve(res: dict, prefix: str | Path) -> list[Path]:
    """AUROC vs depth at the best layer for every method, with CIs."""
    fig, ax = plt.subplots(figsize=(7, 4))
    depths = np.array(res["depths"], float)
    for m, rows in res["best"]["per_depth"].items():
        v, lo, hi = _series(rows, "auroc")
        if np.isnan(v).all():
            continue
        (line,) = ax.plot(depths, v, marker="o", ms=3, label=LABELS.get(m, m), lw=2 if m == "probe" else 1)
        ax.fill_between(depths, lo, hi, color=line.get_color(), alpha=0.15)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="depth (response tokens)", ylabel="AUROC", ylim=(0.3, 1.02),
           title=f"AUROC vs depth at layer {res['best_layer']} (95% CI by prompt)")
    ax.legend(fontsize=8)
    return save_figure(fig, prefix)


def plot_score_histograms(probs: np.ndarray, y: np.ndarray, prefix: str | Path, threshold: float | None = None,
                          title: str = "") -> list[Path]:
    """Histograms of out-of-fold scores, harmful vs benign, with the chosen threshold."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(0, 1, 41)
    ax.hist(probs[y == 0], bins=bins, alpha=0.6, label=f"benign (n={(y == 0).sum()})", color="tab:blue")
    ax.hist(probs[y == 1], bins=bins, alpha=0.6, label=f"harmful (n={(y == 1).sum()})", color="tab:red")
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    ax.set(xlabel="P(harmful)", ylabel="count", yscale="log", title=title)
    ax.legend(fontsize=8)
    return save_figure(fig, prefix)


def plot_reliability(rel: dict, prefix: str | Path, ece: float | None = None) -> list[Path]:
    """Reliability diagram: observed harmful rate vs mean predicted probability per bin."""
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], color="grey", ls=":")
    ax.plot(rel["mean_pred"], rel["frac_pos"], marker="o")
    ax.set(xlabel="mean predicted P(harmful)", ylabel="observed harmful rate", xlim=(0, 1), ylim=(0, 1),
           title="Reliability" + (f" (ECE {ece:.3f})" if ece is not None else ""))
    return save_figure(fig, prefix)


def plot_levers(result, prefix: str | Path) -> list[Path]:
    """One row per lever: leave-one-source-out AUROC (mean over sources, the worst source as a cross) beside the
    per-answer TPR on the calibration prompts and on the test prompts, each with its 95% CI."""
    rows = list(result.rows)
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.45 * len(rows) + 1.4), sharey=True)
    y = np.arange(len(rows))[::-1]

    def bar(ax, d, yy, color, label, key="value"):
        if not d or d.get(key) is None:
            return
        v, lo, hi = d[key], d.get("lo"), d.get("hi")
        # a bootstrap interval may leave out its point estimate (a macro mean over sources): no negative bars
        err = None if lo is None or hi is None else [[max(v - lo, 0.0)], [max(hi - v, 0.0)]]
        ax.errorbar(v, yy, xerr=err, fmt="o", color=color, capsize=3, label=label)

    for i, r in enumerate(rows):
        first = i == 0
        bar(axes[0], r.loso.get("macro"), y[i], "C0", "mean over sources" if first else None)
        worst = r.loso.get("worst")
        if worst:
            axes[0].plot(worst["value"], y[i], "x", color="C3", label="worst source" if first else None)
        bar(axes[1], r.calibration_tpr, y[i] + 0.12, "C2", "calibration prompts" if first else None, "rate")
        bar(axes[1], r.test_tpr, y[i] - 0.12, "C1", "test prompts" if first else None, "rate")
    axes[0].axvline(0.95, ls="--", color="grey", lw=1, label="target: 0.95 mean, 0.90 worst")
    axes[0].axvline(0.90, ls=":", color="grey", lw=1)
    axes[1].axvline(0.90, ls="--", color="grey", lw=1, label="target 0.90")
    axes[0].set_yticks(y, [r.lever for r in rows])
    axes[0].set_xlabel("leave-one-source-out AUROC")
    axes[1].set_xlabel("per-answer TPR at the lever's threshold")
    axes[1].set_xlim(-0.02, 1.02)
    for ax in axes:
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="best", fontsize=7)
    fig.suptitle("Recipe levers on one store and split (95% CIs over prompt groups)", fontsize=10)
    return save_figure(fig, prefix)


def plot_positions(result, prefix: str | Path) -> list[Path]:
    """Per layer: a positions × depth heatmap of out-of-fold AUROC, and the per-position AUROC curves over depth
    (the header bold, injected controls dashed)."""
    from interp.probes.position_names import HEADER, LABELS

    layers = list(result.layers)
    fig, axes = plt.subplots(len(layers), 2, figsize=(13, 0.32 * len(result.rows) / len(layers) * len(layers) + 2.5),
                             squeeze=False)
    depths = [str(d) for d in result.depths] + ["end"]
    for i, layer in enumerate(layers):
        rows = [r for r in result.rows if r.layer == layer]
        grid = np.array([[np.nan if c is None else c["value"] for c in r.per_depth] for r in rows])
        ax = axes[i, 0]
        im = ax.imshow(grid, aspect="auto", vmin=0.5, vmax=1.0, cmap="viridis")
        ax.set_yticks(range(len(rows)), [LABELS.get(r.position, r.position) for r in rows], fontsize=7)
        ax.set_xticks(range(grid.shape[1]), depths[:grid.shape[1]], fontsize=7, rotation=90)
        ax.set_title(f"layer {layer}: out-of-fold AUROC", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.03)
        ax = axes[i, 1]
        for r in rows:
            if r.position.startswith("header["):
                continue
            v = np.array([np.nan if c is None else c["value"] for c in r.per_depth])
            style = {"lw": 2.5, "color": "k"} if r.position == HEADER else {"lw": 1}
            if r.position in ("user_header", "newlines", "random"):
                style["ls"] = "--"
            ax.plot(range(len(v)), v, marker=".", label=LABELS.get(r.position, r.position), **style)
        ax.set_xticks(range(grid.shape[1]), depths[:grid.shape[1]], fontsize=7, rotation=90)
        ax.set_ylim(0.4, 1.02)
        ax.set_xlabel("depth (response tokens before the read)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    fig.suptitle("Is the Safety Token special? AUROC per read position (grouped folds)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, prefix)
