"""Scores of a fitted readout over a store, one layer in memory at a time.

A readout is one probe per layer of ``layers``; its logit is the mean of their logits (one layer: that probe's),
as :meth:`interp.probes.probeset.ProbeSet.combined_score` computes it on the saved probes. Each layer is read,
scored and released before the next is read, so memory holds one layer's rows, never the readout's.
"""

from __future__ import annotations

import numpy as np

from interp.probes.calibration import sigmoid
from interp.probes.data import LayerData, load_layer

__all__ = ["deployed_answer_scores", "readout_scores"]


def readout_scores(store, hook: str, layers: list[int], position, depths, params: list, *,
                   select: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, LayerData]:
    """Probability per (row, depth) ``[N, D]`` (NaN on pairs that are not valid) and per answer end ``[N]`` (NaN
    without an end slot) of the readout ``params`` (one per layer of ``layers``), over the finished rows, or
    ``select``'s rows of them; also those rows' labels, groups and valid pairs (a LayerData without activations)."""
    z, z_end, kept = [], [], None
    for layer, pp in zip(layers, params):
        data = load_layer(store, hook, layer, position, depths, pairs_only=True, select=select)
        rows, cols = np.nonzero(data.valid)
        if len(rows):
            z.append(pp.logit(data.features(rows, cols)))
        z_end.append(None if data.X_end is None else pp.logit(np.ascontiguousarray(data.X_end, np.float32)))
        kept = data.labels_only()
        del data  # released before the next layer is read
    grid = np.full(kept.valid.shape, np.nan)
    rows, cols = np.nonzero(kept.valid)
    if len(rows):
        grid[rows, cols] = sigmoid(np.mean(z, 0))
    end = np.full(len(kept.valid), np.nan)
    if all(e is not None for e in z_end):
        end = sigmoid(np.mean(z_end, 0))
    return grid, end, kept


def deployed_answer_scores(probes, store, depths=None):
    """Each finished answer of ``store`` as the deployed guard scores it with the probe set ``probes``: its
    readout (the saved parts' mean logit), its schedule's checks and rule at its calibrated answer length
    (:func:`interp.probes.answers.answer_scores`); returns the :class:`~interp.probes.answers.AnswerScores` and
    the rows' metadata (:func:`interp.probes.data.finished_meta`). ``depths``: the grid the set was trained on."""
    from interp.probes.answers import Deployed, answer_scores
    from interp.probes.data import finished_meta
    from interp.probes.fit import LinearParams
    from interp.probes.protocol import Schedule

    schedule = Schedule.from_dict(probes.schedule)  # the checks the threshold was calibrated for
    meta = finished_meta(store)
    params = [LinearParams(*map(np.asarray, probes.folded(layer))) for layer in probes.readout]
    grid, ends, kept = readout_scores(store, probes.hook, probes.readout, probes.position, depths, params)
    return answer_scores(grid, kept.depths, Deployed.of(meta, schedule.answer_length), schedule, ends), meta
