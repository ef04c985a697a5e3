"""The one rule that picks the probe layer; ``anydepth sweep`` and ``anydepth train`` both call it, so on the same
scores they cannot disagree: the highest grouped-CV AUROC (the first of ties), unless the user fixes one. (The
threshold's one rule is per answer, on the guard's checks: :mod:`interp.probes.answers`.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from interp import UserError


def choose_layer(layers: Sequence[int], aurocs: Sequence[float], fixed: int | None = None) -> int:
    """``fixed`` if given, else the layer with the highest AUROC (first of ties; NaN layers never win)."""
    if fixed is not None:
        return int(fixed)
    a = np.asarray(aurocs, np.float64)
    if not np.isfinite(a).any():
        raise UserError("no layer has a finite AUROC (every fold held one class?); add prompts of both labels")
    return int(list(layers)[int(np.nanargmax(a))])
