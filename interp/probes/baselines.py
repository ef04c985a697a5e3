"""The held-out report's baselines: each fitted on the training prompts only and scored on the test prompts only,
reading the rows of one role at a time (never a whole layer beside another).

``last_token`` (the last generated token at each depth), ``prompt`` (the last prompt token, one score per prompt
given to every depth), ``shuffled`` (the probe's own position with the labels permuted between prompt groups)
and ``ngram`` (a text classifier on the prompt and the response prefix). Scores are ``[N, D]`` over every
finished row, NaN outside the test rows and where the probe has no score.
"""

from __future__ import annotations

import numpy as np

from interp import UserError
from interp.probes.calibration import sigmoid
from interp.probes.data import depth_columns, load_layer
from interp.probes.oof import ProbeConfig, fit_probes, shuffled_labels
from interp.probes.readout import readout_scores

__all__ = ["baseline_scores"]


def _fit_then_test(store, hook: str, layer: int, position, depths, probe: ProbeConfig, roles: np.ndarray,
                   valid: np.ndarray, shuffle_seed: int | None = None) -> np.ndarray | None:
    """Fit on the training rows' pairs (labels permuted between prompt groups with ``shuffle_seed``; None when the
    permutation leaves one class), then score the test rows' pairs: ``[N, D]``."""
    train_m, test_m = roles == "train", roles == "test"
    tr = load_layer(store, hook, layer, position, depths, pairs_only=True, select=train_m)
    X, y, rows, _ = tr.flat()
    if shuffle_seed is not None:
        y = shuffled_labels(tr.y, tr.groups, shuffle_seed)[rows]
        if len(np.unique(y)) < 2:
            return None
    pp = fit_probes(X, y, np.ones((1, len(y)), bool), probe, tr.sources[rows])[0]
    del tr, X  # the training rows go before the test rows are read
    grid = np.full(valid.shape, np.nan)
    if test_m.any():
        grid[test_m] = readout_scores(store, hook, [layer], position, depths, [pp], select=test_m)[0]
    return np.where(valid, grid, np.nan)


def _prompt_only(store, hook: str, layer: int, depths, probe: ProbeConfig, roles: np.ndarray,
                 valid: np.ndarray) -> np.ndarray:
    """The last prompt token (one row per example, read at one depth), fitted once per prompt; its score is given
    to every depth."""
    train_m = roles == "train"
    other = load_layer(store, hook, layer, "prompt", depths[:1])
    rows = other.X[:, 0]
    pp = fit_probes(rows[train_m], other.y[train_m], np.ones((1, int(train_m.sum())), bool), probe,
                    other.sources[train_m])[0]
    return np.where(valid & (roles == "test")[:, None], sigmoid(pp.logit(rows))[:, None], np.nan)


def _ngram(store, depths, meta: dict, roles: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The text classifier on the prompt and the response prefix at ``depths`` (the columns of ``valid``), each
    pair with its own label."""
    from interp.probes.ngram import fit_predict
    from interp.probes.stores import store_texts

    cols = depth_columns(store, depths)
    texts = store_texts(store, [int(d) for d in depths], meta)
    y = meta["y_depth"][:, cols] if "y_depth" in meta else np.broadcast_to(meta["y"][:, None], valid.shape)
    tr_r, tr_c = np.nonzero(valid & (roles == "train")[:, None])
    te_r, te_c = np.nonzero(valid & (roles == "test")[:, None])
    ng = np.full(valid.shape, np.nan)
    ng[te_r, te_c] = fit_predict(texts[tr_r, tr_c], y[tr_r, tr_c], texts[te_r, te_c])
    return ng


def baseline_scores(store, hook: str, layer: int, position, depths, probe: ProbeConfig, meta: dict,
                    roles: np.ndarray, valid: np.ndarray, seed: int) -> tuple[dict[str, np.ndarray], list[str]]:
    """Every baseline's test scores at ``layer`` (``valid``: the pairs the probe scores), and notes on the ones
    skipped (a store without that position or without response text)."""
    methods, notes = {}, []
    for pos in ("last_token", "prompt"):
        try:
            methods[pos] = (_fit_then_test(store, hook, layer, pos, depths, probe, roles, valid) if pos == "last_token"
                            else _prompt_only(store, hook, layer, depths, probe, roles, valid))
        except (UserError, KeyError, ValueError) as err:
            notes.append(f"baseline {pos} skipped: {err}")
    shuffled = _fit_then_test(store, hook, layer, position, depths, probe, roles, valid, shuffle_seed=seed + 1)
    if shuffled is not None:
        methods["shuffled"] = shuffled
    if "response_chars" in meta:
        methods["ngram"] = _ngram(store, depths, meta, roles, valid)
    else:
        notes.append("baseline ngram skipped: the store records no response text (re-extract with this version)")
    return methods, notes
