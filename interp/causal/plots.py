"""Plots of the causal experiments (matplotlib, Agg backend): patching heatmaps, controls, top-k curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    tmp.replace(path)
    return path


def patch_heatmaps(result: dict, path: Path, metric: str = "d_refusal") -> Path:
    """One heatmap (layers × depths) of mean ``metric`` per patch direction."""
    from interp.causal.patching import heatmap_matrix

    plt = _plt()
    directions = sorted({c["direction"] for c in result["cells"]})
    fig, axes = plt.subplots(1, max(1, len(directions)), figsize=(5.8 * max(1, len(directions)), 5), squeeze=False)
    for ax, direction in zip(axes[0], directions):
        mat = heatmap_matrix(result, direction, metric)
        lim = np.nanmax(np.abs(mat)) if np.isfinite(mat).any() else 1.0
        im = ax.imshow(mat, aspect="auto", origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_xticks(range(len(result["depths"])), result["depths"])
        ax.set_yticks(range(len(result["layers"])), result["layers"])
        ax.set_xlabel("depth (response tokens)")
        ax.set_ylabel("patched layer")
        ax.set_title(f"{direction} ({result['where']})")
        fig.colorbar(im, ax=ax, label=f"mean {metric}")
    fig.tight_layout()
    return _save(fig, path)


def knockout_plot(rows: list[dict], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    for label in ("harmful", "benign"):
        sel = [r for r in rows if r["label"] == label]
        x = [r["depth"] for r in sel]
        m = np.array([r["d_refusal"]["mean"] for r in sel])
        lo = np.array([r["d_refusal"]["lo"] for r in sel])
        hi = np.array([r["d_refusal"]["hi"] for r in sel])
        ax.errorbar(x, m, yerr=[np.nan_to_num(m - lo), np.nan_to_num(hi - m)], marker="o", capsize=3, label=label)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("depth")
    ax.set_ylabel("Δ refusal log-odds (knockout − clean)")
    ax.set_title("span → response attention knockout")
    ax.legend()
    return _save(fig, path)


def controls_plot(rows: list[dict], path: Path, title: str) -> Path:
    """Real-direction effect (mean, 95% CI) beside the random-direction control distribution, per row."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(rows)), 4))
    for i, r in enumerate(rows):
        ctrl = np.asarray(r["random_means"])
        if ctrl.size:
            ax.scatter(np.full(ctrl.size, i) + 0.15, ctrl, s=8, color="grey", alpha=0.6)
        m, lo, hi = r["real"]["mean"], r["real"]["lo"], r["real"]["hi"]
        ax.errorbar([i - 0.1], [m], yerr=[[np.nan_to_num(m - lo)], [np.nan_to_num(hi - m)]], fmt="o", color="C3",
                    capsize=3)
    ax.set_xticks(range(len(rows)), [f"{r['direction']}\n{r['label'][:3]} d{r['depth']} α{r['alpha']:g}"
                                     for r in rows], fontsize=7)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylabel("Δ refusal log-odds")
    ax.set_title(title + " (red: direction, 95% CI; grey: random directions)")
    return _save(fig, path)


def topk_plot(result: dict, path: Path, metric: str = "d_refusal") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    groups = sorted({(r["label"], r["depth"]) for r in result["rows"]})
    for j, (label, depth) in enumerate(groups):
        sel = sorted((r for r in result["rows"] if (r["label"], r["depth"]) == (label, depth)), key=lambda r: r["k"])
        ks = [r["k"] for r in sel]
        m = np.array([r[metric]["mean"] for r in sel])
        lo, hi = np.array([r[metric]["lo"] for r in sel]), np.array([r[metric]["hi"] for r in sel])
        ax.errorbar(ks, m, yerr=[np.nan_to_num(m - lo), np.nan_to_num(hi - m)], marker="o", capsize=3,
                    color=f"C{j}", label=f"{label} d={depth} top-k")
        ax.plot(ks, [r[f"{metric}_random_mean"] for r in sel], ls="--", color=f"C{j}", alpha=0.6,
                label=f"{label} d={depth} random k")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("k features ablated at the span")
    ax.set_ylabel(metric.replace("d_", "Δ "))
    ax.set_title(f"{result['mode']} ablation, transcoder layer {result['layer']}")
    ax.legend(fontsize=7)
    return _save(fig, path)
