"""Activation patching at the re-injected span and attention knockout of span -> continuation.

Paired runs at the same depth (harmful prefix vs benign prefix): the residual stream at one site of the
destination run, at the probe token or at the whole span, is replaced by the source run's vectors at the same
span offsets (the span tokens are identical, their absolute positions may differ). Effects are read at the
header's next token (refusal log-odds) and as probe scores at the probe token.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from interp import UserError
from interp.causal.inputs import BENIGN, HARMFUL, Example, SpanBatch, build_batch, example_groups, label_batch
from interp.causal.metrics import Probe
from interp.causal.runner import (
    PREFIX_POSITIONS,
    WHERE,
    Readout,
    SiteFn,
    SpanRunner,
    prefix_col,
    read,
    span_cols,
)
from interp.guard.openers import OpenerTree
from interp.model.hooks import HookFn, at_positions, resid_post
from interp.spans.derive import SafetySpans
from interp.stats import grouped_mean_ci

__all__ = ["heatmap_matrix", "knockout_effects", "pair_up", "patch_hook", "patching_sweep"]


def patch_hook(dst: SpanBatch, src: SpanBatch, src_site_values: torch.Tensor, where: str) -> HookFn:
    """Hook writing ``src``'s site vectors (``[B, h, d]`` captured at the span) at the chosen span offsets
    into ``dst`` (rows paired in order)."""
    if len(dst.examples) != len(src.examples) or dst.span_ids != src.span_ids:
        raise UserError("patching needs paired batches with the same number of rows and the same span")
    src_rows, src_cols = span_cols(src, where)
    dst_rows, dst_cols = span_cols(dst, where)
    vectors = src_site_values[src_rows, src_cols]
    return at_positions(lambda _x: vectors, dst_rows, dst_cols)


def pair_up(examples: Sequence[Example], depth: int) -> tuple[list[Example], list[Example]]:
    """Harmful and benign examples valid at ``depth``, truncated to equal counts (paired in order)."""
    h = [e for e in examples if e.label == HARMFUL and len(e.response_ids) >= depth]
    b = [e for e in examples if e.label == BENIGN and len(e.response_ids) >= depth]
    n = min(len(h), len(b))
    return h[:n], b[:n]


def _delta(patched: Readout, clean: Readout, dst: slice, src: slice, probe_layers: Sequence[int]) -> dict:
    """Effects on the rows ``dst`` of a both-labels batch whose partners are the rows ``src``."""
    out = {"d_refusal": (patched.refusal[dst] - clean.refusal[dst]).numpy(),
           "gap_refusal": (clean.refusal[src] - clean.refusal[dst]).numpy()}
    for L in probe_layers:
        out[f"d_probe_{L}"] = (patched.probe[L][dst] - clean.probe[L][dst]).numpy()
    return out


def patching_sweep(model, examples: Sequence[Example], span: SafetySpans, pad_id: int, openers: OpenerTree, *,
                   depths: Sequence[int], layers: Sequence[int], where: str = "span",
                   site: SiteFn = resid_post, probe: Probe | None = None, probe_layers: Sequence[int] = (),
                   probe_site: SiteFn = resid_post, min_pairs: int = 2, cached: bool = True,
                   prompt_suffix_len: int | None = None) -> dict:
    """Patch benign -> harmful and harmful -> benign at every (layer, depth); mean effects with 95% CIs over the
    receiving rows' prompt groups.

    Returns ``{"layers", "depths", "n_pairs": [D], "cells": [{layer, depth, direction, metric: ci}, ...]}``
    where ``direction`` names the run that receives the patch (``harmful<-benign`` or ``benign<-harmful``).
    Both labels go in one batch (harmful rows, then their benign partners) so that one forward patches both
    directions. ``cached=False`` forwards whole sequences (the reference) instead of the span over a cached
    prefix; a position before the span (``where`` in :data:`interp.causal.runner.PREFIX_POSITIONS`, ``t_inst``
    with ``prompt_suffix_len``) is patched in whole-sequence forwards, so the span and the reply see the edit.
    """
    cells, n_pairs = [], []
    prefix = where in PREFIX_POSITIONS
    if where not in WHERE and not (str(where).isdigit() and int(where) < len(span.span_ids)):
        raise UserError(f"unknown patch position {where!r}; use one of {', '.join(WHERE)} or a span index "
                        f"0..{len(span.span_ids) - 1}")
    bar = tqdm(total=len(depths) * len(layers), desc="patching", leave=False)
    for d in depths:
        harm, ben = pair_up(examples, d)
        n_pairs.append(len(harm))
        if len(harm) < min_pairs:
            bar.update(len(layers))
            continue
        n = len(harm)
        batch = build_batch(harm + ben, d, span, pad_id)
        batch.prompt_suffix_len = prompt_suffix_len
        runner = SpanRunner(model, batch, cached and not prefix)
        if prefix:
            runner.capture_width = -prefix_col(batch, where)
        clean = read(runner, openers, probe, probe_layers, probe_site, capture=[site(L) for L in layers])
        partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])  # row i's pair in the other label
        groups = np.asarray(example_groups(runner.batch.examples))
        rows = {HARMFUL: slice(0, n), BENIGN: slice(n, 2 * n)}
        for L in layers:
            hook = patch_hook(runner.batch, runner.batch, clean.cache[site(L)][partner], where)
            patched = read(runner, openers, probe, probe_layers, probe_site, hooks={site(L): hook})
            for dst, src in ((HARMFUL, BENIGN), (BENIGN, HARMFUL)):
                deltas = _delta(patched, clean, rows[dst], rows[src], probe_layers)
                cell = {"layer": L, "depth": d, "direction": f"{dst}<-{src}", "n": len(harm)}
                cell.update({k: grouped_mean_ci(v, groups[rows[dst]]) for k, v in deltas.items()})
                gap = float(np.mean(deltas["gap_refusal"]))
                cell["fraction_of_gap"] = float(np.mean(deltas["d_refusal"])) / gap if gap else float("nan")
                cells.append(cell)
            bar.update(1)
    bar.close()
    return {"layers": list(layers), "depths": list(depths), "where": where, "n_pairs": n_pairs, "cells": cells}


def knockout_effects(model, examples: Sequence[Example], span: SafetySpans, pad_id: int, openers: OpenerTree, *,
                     depths: Sequence[int], probe: Probe | None = None, probe_layers: Sequence[int] = (),
                     probe_site: SiteFn = resid_post, cached: bool = True) -> list[dict]:
    """Block the span's attention to the response tokens (every layer); Δ refusal / Δ probe by depth & label."""
    out = []
    for d in tqdm(depths, desc="knockout", leave=False):
        for label in (HARMFUL, BENIGN):
            batch = label_batch(examples, label, d, span, pad_id)
            if batch is None:
                continue
            runner = SpanRunner(model, batch, cached)
            clean = read(runner, openers, probe, probe_layers, probe_site)
            ko = read(runner, openers, probe, probe_layers, probe_site, knockout=True)
            groups = example_groups(batch.examples)
            row = {"depth": d, "label": label, "n": len(batch.examples),
                   "refusal_clean": grouped_mean_ci(clean.refusal.numpy(), groups),
                   "refusal_knockout": grouped_mean_ci(ko.refusal.numpy(), groups),
                   "d_refusal": grouped_mean_ci((ko.refusal - clean.refusal).numpy(), groups)}
            for L in probe_layers:
                row[f"d_probe_{L}"] = grouped_mean_ci((ko.probe[L] - clean.probe[L]).numpy(), groups)
            out.append(row)
    return out


def heatmap_matrix(result: dict, direction: str, metric: str = "d_refusal") -> np.ndarray:
    """``[layers, depths]`` mean of ``metric`` for one patch direction (NaN where no pairs)."""
    layers, depths = result["layers"], result["depths"]
    mat = np.full((len(layers), len(depths)), np.nan)
    for c in result["cells"]:
        if c["direction"] == direction and metric in c:
            mat[layers.index(c["layer"]), depths.index(c["depth"])] = c[metric]["mean"]
    return mat
