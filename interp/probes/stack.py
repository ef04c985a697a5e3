"""A stacked multi-layer probe: one regularised logistic regression on several layers' features side by side
(standardised per training set), instead of the mean of per-layer probes' logits.

It is saved and served as the guard's multi-layer readout: a linear probe on ``[x_1, ..., x_K]`` has the logit
``sum_l w_l . x_l + b``, which equals the mean over l of the parts ``(K w_l) . x_l + b``
(:func:`split_stacked`), so the guard, the evaluations and :meth:`interp.probes.probeset.ProbeSet.combined_score`
score it with no code of their own.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from interp import UserError
from interp.probes.data import LayerData
from interp.probes.fit import LinearParams


def stack_layers(datas: Sequence[LayerData | Callable[[], LayerData]]) -> LayerData:
    """The layers' features concatenated per (row, depth) pair, ``[..., K * d]`` in the order given; the rows,
    labels and valid pairs must be the same in every layer. An entry may be a function that reads its layer: it
    is called in turn and its activations are copied into the stacked buffer and released, so memory holds the
    stack and one layer, not every layer twice. The result holds the valid pairs only when the first layer does,
    else the dense grid (invalid cells zero where a layer held pairs only)."""
    if not datas:
        raise UserError("stacking needs at least one layer")
    first, out, ends, width = None, None, [], 0
    for i, entry in enumerate(datas):
        data = entry() if callable(entry) else entry
        if first is None:
            first, width = data.labels_only(), data.d_model
            pairs = data.X is None
            shape = (len(data.Xv),) if pairs else data.valid.shape
            out = np.empty((*shape, len(datas) * width), np.float32)
        elif not (np.array_equal(data.valid, first.valid) and np.array_equal(data.y, first.y)):
            raise UserError("stacked layers must hold the same rows and valid pairs")
        cols = slice(i * width, (i + 1) * width)
        if pairs:
            out[:, cols] = data.features(*first.pairs())
        else:
            out[..., cols] = data.X if data.X is not None else _dense(data)
        ends.append(data.X_end)
        del data
    X_end = None if any(e is None for e in ends) else np.concatenate(ends, axis=1)
    return replace(first, X=None if pairs else out, Xv=out if pairs else None, X_end=X_end, layer=None)


def _dense(data: LayerData) -> np.ndarray:
    out = np.zeros((*data.valid.shape, data.d_model), np.float32)
    out[data.valid] = data.Xv
    return out


def split_stacked(params: LinearParams, n_layers: int) -> list[LinearParams]:
    """The per-layer parts of a stacked probe (raw basis, the scaler folded in): part l has weight ``K w_l`` and
    the stacked bias, so the mean of the parts' logits is the stacked logit."""
    w, b = params.folded()
    if w.ndim != 1 or len(w) % n_layers:
        raise UserError(f"a stacked probe of {len(w)} features does not split into {n_layers} layers")
    return [LinearParams(part * n_layers, np.asarray(float(b)), info={"stacked_part": i, "of": n_layers})
            for i, part in enumerate(np.split(w, n_layers))]


def warn_if_wide(n_features: int, n_rows: int, C: float) -> None:
    """A stacked probe with more features than training rows is only as good as its regularisation: say which."""
    if n_features > n_rows:
        warnings.warn(f"the stacked probe has {n_features} features and {n_rows} training rows: more features than "
                      f"rows, so the L2 penalty (C={C}) decides the fit; use fewer layers (--combine-top) or more "
                      "prompts", stacklevel=3)
