"""Few-row ``nn.Linear`` on CPU: compute ``(W @ xᵀ)ᵀ`` instead of ``x @ Wᵀ``.

A guard check forwards 4–5 tokens, a batched decode step one token per row. For 2–6 rows MKL's
``x @ Wᵀ`` kernel on our CPUs is 2.5–5× slower than the same product written as ``W @ xᵀ``
(float32, 2 threads, measured on Qwen-0.5B shapes: 4864×896 with 4 rows 1.01 ms vs 0.41 ms; the
151936×896 LM head with 4 rows 59 ms vs 13 ms; one row is equal either way). The result differs
from ``F.linear`` only in float rounding (relative 1e-6; tests/test_fast_linear.py).

:func:`install` swaps the forward of every ``nn.Linear`` of a model (reference-counted, so several
users can share a model); :func:`uninstall` restores it. Other inputs take ``F.linear`` unchanged.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

MAX_ROWS = 6  # break-even measured near 8 rows for the 4864×896 MLP matrices
_COUNT = "_anydepth_fast_linear_users"


def few_row_linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, as ``W @ xᵀ`` when ``x`` has 2..MAX_ROWS rows of float32 on CPU."""
    w = module.weight
    d_in = x.shape[-1]
    rows = x.numel() // d_in if d_in else 0
    if not (1 < rows <= MAX_ROWS and x.device.type == "cpu" and x.dtype == torch.float32 == w.dtype):
        return F.linear(x, w, module.bias)
    y = torch.mm(w, x.reshape(rows, d_in).t()).t()
    if module.bias is not None:
        y = y + module.bias
    return y.reshape(*x.shape[:-1], w.shape[0])


def install(model: nn.Module) -> bool:
    """Route the model's linears through :func:`few_row_linear`; ``False`` (no-op) off CPU/float32."""
    first = next(model.parameters(), None)
    if first is None or first.device.type != "cpu" or first.dtype != torch.float32:
        return False
    users = getattr(model, _COUNT, 0)
    if users == 0:
        for module in model.modules():
            if type(module) is nn.Linear:
                module.forward = types.MethodType(few_row_linear, module)
    setattr(model, _COUNT, users + 1)
    return True


def uninstall(model: nn.Module) -> None:
    """Undo one :func:`install` (the last one restores ``nn.Linear.forward``)."""
    users = getattr(model, _COUNT, 0)
    if users == 0:
        return
    setattr(model, _COUNT, users - 1)
    if users == 1:
        for module in model.modules():
            if type(module) is nn.Linear and "forward" in module.__dict__:
                del module.forward
