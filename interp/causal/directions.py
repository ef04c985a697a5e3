"""Directional ablation and steering at the span positions only, against random-direction controls.

Ablation projects a unit direction ``u`` out of the residual stream (``x - (x·u) u``) at the chosen sites and
span positions; steering adds ``alpha * scale * u`` there (``scale`` = mean residual norm at those positions,
so ``alpha`` is in units of a typical residual vector). Each real direction is compared with ``n_random``
random unit directions treated identically (the control distribution).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from interp import UserError
from interp.causal.inputs import BENIGN, HARMFUL, Example, example_groups, label_batch
from interp.causal.runner import SpanRunner, read, span_cols
from interp.guard.openers import OpenerTree
from interp.model.hooks import HookFn, at_positions, resid_post, resid_pre
from interp.spans.derive import SafetySpans
from interp.stats import grouped_mean_ci


def unit(v: torch.Tensor) -> torch.Tensor:
    v = v.detach().double().flatten()
    n = v.norm()
    if not torch.isfinite(n) or n == 0:
        raise UserError("direction has zero or non-finite norm")
    return v / n


def ablate_fn(u: torch.Tensor):
    """``x -> x - (x·u) u`` for unit ``u`` (computed in float64, cast back)."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        xd = x.double()
        ud = u.to(xd.device)
        return (xd - (xd @ ud)[..., None] * ud).to(x.dtype)
    return fn


def steer_fn(vector: torch.Tensor):
    """``x -> x + vector``."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        return x + vector.to(x.device, x.dtype)
    return fn


def direction_hooks(batch, sites: Sequence[str], u: torch.Tensor, mode: str, alpha: float = 0.0,
                    scale: float = 1.0, where: str = "span") -> dict[str, HookFn]:
    """One hook per site that ablates or steers along ``u`` at the batch's span (or probe) positions only."""
    rows, cols = span_cols(batch, where)
    if mode == "ablate":
        fn = ablate_fn(unit(u))
    elif mode == "steer":
        fn = steer_fn(unit(u) * alpha * scale)
    else:
        raise UserError(f"unknown mode {mode!r}; use ablate or steer")
    return {s: at_positions(fn, rows, cols) for s in sites}


def random_directions(d_model: int, n: int, seed: int = 0) -> torch.Tensor:
    """``[n, d_model]`` random unit directions (float64, seeded)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d_model, generator=g, dtype=torch.float64)
    return v / v.norm(dim=1, keepdim=True)


def diff_of_means(model, examples: Sequence[Example], span: SafetySpans, pad_id: int, openers: OpenerTree, *,
                  depths: Sequence[int], layer: int, site=resid_post, cached: bool = True) -> torch.Tensor:
    """Mean harmful minus mean benign residual at the probe token (pooled over depths), at ``site(layer)``."""
    sums = {HARMFUL: [], BENIGN: []}
    for d, label in tqdm([(d, lab) for d in depths for lab in sums], desc="diff-of-means direction", leave=False):
        batch = label_batch(examples, label, d, span, pad_id)
        if batch is None:
            continue
        r = read(SpanRunner(model, batch, cached), None, capture=(site(layer),))
        sums[label].append(r.cache[site(layer)][span_cols(batch, "probe")].double())
    if not sums[HARMFUL] or not sums[BENIGN]:
        raise UserError("diff-of-means needs harmful and benign examples long enough for the depths")
    return torch.cat(sums[HARMFUL]).mean(0) - torch.cat(sums[BENIGN]).mean(0)


def _summary(real: np.ndarray, controls: np.ndarray, groups: Sequence[str]) -> dict:
    """Real per-example deltas (CI over prompt groups) vs the per-direction mean deltas of the random controls."""
    m = float(real.mean())
    out = {"real": grouped_mean_ci(real, groups), "random_mean": float(controls.mean()) if controls.size else float("nan"),
           "random_q025": float(np.quantile(controls, 0.025)) if controls.size else float("nan"),
           "random_q975": float(np.quantile(controls, 0.975)) if controls.size else float("nan"),
           "random_means": controls.tolist()}
    out["p_vs_random"] = float((1 + np.sum(np.abs(controls) >= abs(m))) / (1 + controls.size))
    return out


def _delta(runner: SpanRunner, openers: OpenerTree, clean_refusal: torch.Tensor, hooks: dict) -> np.ndarray:
    return (read(runner, openers, hooks=hooks).refusal - clean_refusal).numpy()


def direction_effects(model, examples: Sequence[Example], span: SafetySpans, pad_id: int, openers: OpenerTree, *,
                      directions: dict[str, torch.Tensor], depths: Sequence[int], layers: Sequence[int],
                      mode: str = "ablate", alphas: Sequence[float] = (0.0,), n_random: int = 20,
                      where: str = "span", site_kind: str = "resid_pre", seed: int = 0, cached: bool = True
                      ) -> dict:
    """Δ refusal log-odds per (direction, alpha, label, depth) at the span, with random-direction controls.

    Sites: ``site_kind`` (``resid_pre`` or ``resid_post``) of each layer in ``layers``. In ``steer`` mode the
    sign of ``alpha`` is applied as given to every label (positive = towards the direction).
    """
    if n_random < 0:
        raise UserError("n_random must be >= 0")
    site = {"resid_pre": resid_pre, "resid_post": resid_post}[site_kind]
    sites = [site(L) for L in layers]
    d_model = next(iter(directions.values())).numel()
    randoms = random_directions(d_model, n_random, seed)
    alphas = tuple(alphas) if mode == "steer" else (0.0,)
    rows = []
    todo = [(d, lab) for d in depths for lab in (HARMFUL, BENIGN)]
    for d, label in tqdm(todo, desc=f"{mode} directions", leave=False):
        batch = label_batch(examples, label, d, span, pad_id)
        if batch is None:
            continue
        runner = SpanRunner(model, batch, cached)
        clean = read(runner, openers, capture=sites[:1])
        groups = example_groups(batch.examples)
        r, c = span_cols(batch, where)
        scale = float(clean.cache[sites[0]][r, c].norm(dim=-1).mean())
        for alpha in alphas:
            controls = np.array([_delta(runner, openers, clean.refusal, direction_hooks(
                batch, sites, u, mode, alpha, scale, where)).mean() for u in randoms])
            for name, vec in directions.items():
                row = {"direction": name, "alpha": alpha, "label": label, "depth": d, "n": len(batch.examples),
                       "scale": scale, "refusal_clean": grouped_mean_ci(clean.refusal.numpy(), groups)}
                hooks = direction_hooks(batch, sites, vec, mode, alpha, scale, where)
                row.update(_summary(_delta(runner, openers, clean.refusal, hooks), controls, groups))
                rows.append(row)
    return {"mode": mode, "layers": list(layers), "site": site_kind, "where": where, "n_random": n_random,
            "rows": rows}
