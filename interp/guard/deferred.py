"""Final checks batched: rows that end between scheduled depths are checked together after the loop.

A row that stops (EOS, the end of its forced text, the length limit) between two scheduled depths gets one last
check of its unchecked tail. Run where it happens, that check costs a forward of the whole batch (lookahead
decoding included) for one row, so a batch of B rows ending one by one pays ~B batch-sized checks. Evaluations
only need each check's outcome, not the moment it is known, so with ``defer_final_checks`` the generator keeps a
copy of each ending row's cache instead (:func:`snapshot`), and after the loop checks every kept row in one
left-padded batch (:func:`stack`). Positions are explicit and padded columns are masked, so each row's check sees
exactly what it would have seen in place (equal up to float rounding; tests/test_guard_deferred.py).
A live guard keeps checking in place: a deferred check would hold back the end of a stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.model.kvcache import check_cache, new_cache, pad_left, sliding_windows


@dataclass
class PendingCheck:
    """One ending row's state at its final check: its cache columns, mask, next position and next-token logits."""

    row: int
    depth: int
    reason: str  # the row's stop reason, given once its check has passed
    keys: list[torch.Tensor]  # per layer [1, kv_heads, n, head_dim] (a copy: the live cache moves on)
    values: list[torch.Tensor]
    mask: torch.Tensor  # [n]
    pos: int
    logits: torch.Tensor  # [vocab]


def can_defer(cache) -> bool:
    """Whether rows of ``cache`` can be copied out whole (full-attention layers; a sliding layer drops entries)."""
    check_cache(cache)
    return all(window is None for window in sliding_windows(cache))


def snapshot(cache, row: int, mask: torch.Tensor, pos: int, logits: torch.Tensor, depth: int,
             reason: str) -> PendingCheck:
    """Copy row ``row`` of ``cache`` (all ``mask.shape[1]`` columns) and what its check needs."""
    n = mask.shape[1]
    keys = [layer.keys[row:row + 1, ..., :n, :].clone() for layer in cache.layers]
    values = [layer.values[row:row + 1, ..., :n, :].clone() for layer in cache.layers]
    return PendingCheck(row=row, depth=depth, reason=reason, keys=keys, values=values, mask=mask[row].clone(),
                        pos=int(pos), logits=logits[row].clone())


def stack(pending: list[PendingCheck], model):
    """``(cache, mask, pos_next, logits)`` of the pending rows as one batch, right-aligned (left-padded, masked)."""
    width = max(p.mask.shape[0] for p in pending)
    cache = new_cache(model)
    for i, layer in enumerate(cache.layers):
        layer.update(torch.cat([pad_left(p.keys[i], width, -2) for p in pending]),
                     torch.cat([pad_left(p.values[i], width, -2) for p in pending]))
    mask = torch.stack([pad_left(p.mask, width, 0) for p in pending])
    pos = torch.tensor([p.pos for p in pending], device=mask.device)
    return cache, mask, pos, torch.stack([p.logits for p in pending])
