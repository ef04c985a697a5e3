"""Prompt-controlled contrasts: AUROC between two answers to the *same* prompt at the *same* depth.

Within harmful prompts the two answers are the model complying (label harmful) and the model refusing (its own or
a recovered refusal, label benign); within benign prompts they are the model's own answer and its answer after a
forced opener. Only pairs inside one (prompt, depth) block are compared (:func:`interp.probes.metrics.auroc_within`;
the prompt's exact text, not its content group, which also joins near-duplicate prompts), so a feature that depends
on the prompt alone ties every pair and scores exactly 0.5: what lifts a score above 0.5 here is read from the
continuation. Depth 0 is left out: there both answers are the same input (nothing of either has been read), so
every position ties there and would only pull each AUROC toward 0.5. Intervals resample prompt groups.
"""

from __future__ import annotations

import numpy as np

from interp.probes.metrics import auroc_within
from interp.stats import group_codes

CONTRASTS = {
    "harmful": "harmful prompts: the model complies (harmful) vs refuses (benign), same prompt and depth",
    "benign": "benign prompts: after a forced opener vs the model's own answer, same prompt and depth",
}


def contrast_rows(y: np.ndarray, prompts: np.ndarray, kinds: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per contrast: the rows it compares (bool ``[N]``) and their contrast label (1 = the first arm)."""
    harmful_prompt = np.isin(prompts, prompts[y == 1])
    benign_rows = ~harmful_prompt & np.isin(kinds, ["own", "prefill"])
    return {"harmful": (harmful_prompt, (y == 1).astype(np.int64)),
            "benign": (benign_rows, (kinds == "prefill").astype(np.int64))}


def within_prompts(p: np.ndarray, label: np.ndarray, prompts: np.ndarray, rows: np.ndarray, W: np.ndarray | None,
                   alpha: float = 0.05) -> dict:
    """AUROC of scores ``p [N, D]`` between the two arms of ``label`` over the finite pairs of ``rows``, compared
    only within one (prompt, depth) block; ``W [B, N]`` bootstrap weights (by prompt group) give the interval."""
    m = rows[:, None] & np.isfinite(p)
    r, k = np.nonzero(m)
    codes = group_codes(prompts)[0]
    blocks = codes[r] * p.shape[1] + k
    lab = label[r]
    arms = np.unique(np.stack([blocks, lab]), axis=1)[0]  # one entry per (block, arm) present
    held, n_arms = np.unique(arms, return_counts=True)
    both = held[n_arms == 2]
    if not len(both):
        return {"note": "no prompt holds both arms at one depth"}
    keep = np.isin(blocks, both)
    s, lab, blocks, r = p[r, k][keep], lab[keep], blocks[keep], r[keep]
    value = float(auroc_within(s, lab, blocks))
    out = {"value": value, "n_blocks": len(both), "n_prompts": int(len(np.unique(codes[r])))}
    if W is not None:
        reps = np.asarray(auroc_within(s, lab, blocks, W[:, r]))
        reps = reps[np.isfinite(reps)]
        lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2]) if len(reps) else (np.nan, np.nan)
        out.update(lo=float(lo), hi=float(hi))
    return out


def prompt_controlled(p: np.ndarray, y: np.ndarray, prompts: np.ndarray, kinds: np.ndarray,
                      W: np.ndarray | None, depths: np.ndarray | None = None) -> dict[str, dict]:
    """Both contrasts of :data:`CONTRASTS` for one score matrix; ``prompts`` are the rows' prompt texts, and with
    ``depths`` (the columns' depths) the depth-0 column is left out."""
    if depths is not None:
        p = np.where(np.asarray(depths)[None, :] > 0, p, np.nan)
    return {name: within_prompts(p, label, prompts, rows, W)
            for name, (rows, label) in contrast_rows(y, prompts, kinds).items()}
