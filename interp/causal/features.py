"""Transcoder features at the re-injected span: ranking (harmful vs benign), relation to the probe, ablation.

Feature activations are read from the transcoder at layer L applied to the MLP input at the span (the probe
token, or the mean over span tokens). Ablation edits only those positions and keeps the transcoder's error
term (see :func:`interp.causal.transcoders.splice_hooks`), so ``k = 0`` is the unmodified model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from interp import UserError
from interp.causal.inputs import BENIGN, HARMFUL, Example, example_groups, label_batch
from interp.causal.metrics import Probe, cohens_d_ci
from interp.causal.runner import SpanRunner, read, span_cols
from interp.causal.transcoders import splice_hooks
from interp.guard.openers import OpenerTree
from interp.model.hooks import mlp_in, resid_post
from interp.spans.derive import SafetySpans
from interp.stats import grouped_mean_ci


@torch.no_grad()
def span_features(model, tc, layer: int, examples: Sequence[Example], span: SafetySpans, pad_id: int, *,
                  depths: Sequence[int], where: str = "probe", cached: bool = True) -> dict:
    """``{label: [N, d_sae]}`` feature activations per (example, depth) at the span (probe token or mean), and
    ``"groups"``: ``{label: [N]}`` each row's prompt group (rows of one prompt at several depths share one)."""
    out: dict[str, list[torch.Tensor]] = {HARMFUL: [], BENIGN: []}
    groups: dict[str, list[str]] = {HARMFUL: [], BENIGN: []}
    for d in depths:
        for label in out:
            batch = label_batch(examples, label, d, span, pad_id)
            if batch is None:
                continue
            groups[label] += example_groups(batch.examples)
            r = read(SpanRunner(model, batch, cached), None, capture=(mlp_in(layer),))
            rows, cols = span_cols(batch, where)
            acts = tc.encode(r.cache[mlp_in(layer)][rows, cols].to(tc.W_enc.dtype))
            if where == "span":
                acts = acts.reshape(len(batch.examples), -1, acts.shape[-1]).mean(1)
            out[label].append(acts.double().cpu())
    acts = {k: torch.cat(v) if v else torch.zeros(0, tc.cfg.d_sae, dtype=torch.float64) for k, v in out.items()}
    return {**acts, "groups": groups}



def rank_features(acts_harmful: torch.Tensor, acts_benign: torch.Tensor, top: int = 50, n_boot: int = 1000,
                  seed: int = 0, groups: dict | None = None) -> list[dict]:
    """Features ranked by |Cohen's d| (harmful vs benign), bootstrap 95% CIs for the ``top`` ones (resampling the
    prompt ``groups`` of each side's rows, as :func:`span_feature_acts` returns them)."""
    a, b = acts_harmful.double().numpy(), acts_benign.double().numpy()
    if len(a) < 2 or len(b) < 2:
        raise UserError("feature ranking needs at least two harmful and two benign rows")
    point = cohens_d_ci(a, b, n_boot=1)[:, 0]
    order = np.argsort(-np.abs(point), kind="stable")[:top]
    g = groups or {}
    ci = cohens_d_ci(a[:, order], b[:, order], n_boot=n_boot, seed=seed, groups_a=g.get(HARMFUL),
                     groups_b=g.get(BENIGN))
    out = []
    for i, f in enumerate(order):
        out.append({"feature": int(f), "d": float(ci[i, 0]), "lo": float(ci[i, 1]), "hi": float(ci[i, 2]),
                    "mean_harmful": float(a[:, f].mean()), "mean_benign": float(b[:, f].mean()),
                    "freq_harmful": float((a[:, f] > 0).mean()), "freq_benign": float((b[:, f] > 0).mean())})
    return out


def decoder_cosines(tc, direction: torch.Tensor) -> torch.Tensor:
    """Cosine of every decoder row with ``direction`` (e.g. the probe weight in the residual basis)."""
    w = direction.detach().double().flatten()
    dec = tc.W_dec.detach().double()
    return (dec @ w) / (dec.norm(dim=1) * w.norm()).clamp_min(1e-30)


def direct_probe_attribution(acts: torch.Tensor, tc, direction: torch.Tensor) -> torch.Tensor:
    """``[N, d_sae]`` direct-path contribution of each feature to a linear probe ``w·x``: ``a_f (W_dec[f]·w)``.

    Valid for a transcoder at a layer at or before the probe layer (paths through later layers ignored).
    """
    return acts.double() * (tc.W_dec.detach().double() @ direction.detach().double().flatten())[None, :]


def feature_edit(features: torch.Tensor, mode: str, means: torch.Tensor | None = None):
    """Edit of feature activations: set ``features`` to zero or to their ``means``."""
    if mode not in ("zero", "mean"):
        raise UserError(f"unknown ablation {mode!r}; use zero or mean")
    if mode == "mean" and means is None:
        raise UserError("mean ablation needs feature means")

    def edit(acts: torch.Tensor) -> torch.Tensor:
        acts = acts.clone()
        acts[:, features] = 0.0 if mode == "zero" else means[features].to(acts.dtype).to(acts.device)
        return acts
    return edit


def topk_ablation(model, tc, layer: int, examples: Sequence[Example], span: SafetySpans, pad_id: int,
                  openers: OpenerTree, *, depths: Sequence[int], ranked: Sequence[int], ks: Sequence[int],
                  mode: str = "zero", means: torch.Tensor | None = None, n_random: int = 10,
                  candidates: Sequence[int] | None = None, probe: Probe | None = None,
                  probe_layers: Sequence[int] = (), probe_site=resid_post, where: str = "span",
                  seed: int = 0, cached: bool = True) -> dict:
    """Δ refusal and Δ probe score vs k when the top-k ranked features are ablated at the span only.

    Controls: ``n_random`` random feature sets of size k drawn from ``candidates`` (default: all features).
    Rows: one per (label, depth, k) with the real effect (mean, CI) and the control means.
    """
    rng = np.random.default_rng(seed)
    pool = np.asarray(candidates if candidates is not None else range(tc.cfg.d_sae))
    rows = []
    todo = [(d, lab) for d in depths for lab in (HARMFUL, BENIGN)]
    for d, label in tqdm(todo, desc="feature ablation", leave=False):
        batch = label_batch(examples, label, d, span, pad_id)
        if batch is None:
            continue
        runner = SpanRunner(model, batch, cached)
        clean = read(runner, openers, probe, probe_layers, probe_site)
        r, c = span_cols(batch, where)
        groups = example_groups(batch.examples)

        def effect(feats, runner=runner, clean=clean, r=r, c=c) -> dict[str, np.ndarray]:
            hooks = splice_hooks(tc, layer, feature_edit(torch.as_tensor(np.asarray(feats), dtype=torch.long),
                                                         mode, means), r, c)
            out = read(runner, openers, probe, probe_layers, probe_site, hooks=hooks)
            res = {"d_refusal": (out.refusal - clean.refusal).numpy()}
            for L in probe_layers:
                res[f"d_probe_{L}"] = (out.probe[L] - clean.probe[L]).numpy()
            return res

        for k in ks:
            real = effect(list(ranked[:k]))
            controls = [effect(rng.choice(pool, size=min(k, len(pool)), replace=False)) for _ in range(n_random)]
            row = {"label": label, "depth": d, "k": k, "n": len(batch.examples)}
            for key, vals in real.items():
                ctrl = np.array([c_[key].mean() for c_ in controls])
                row[key] = grouped_mean_ci(vals, groups)
                row[f"{key}_random_mean"] = float(ctrl.mean()) if ctrl.size else float("nan")
                row[f"{key}_random_q025"] = float(np.quantile(ctrl, 0.025)) if ctrl.size else float("nan")
                row[f"{key}_random_q975"] = float(np.quantile(ctrl, 0.975)) if ctrl.size else float("nan")
            rows.append(row)
    return {"layer": layer, "mode": mode, "ks": list(ks), "ranked": [int(f) for f in ranked[: max(ks)]],
            "n_random": n_random, "rows": rows}
