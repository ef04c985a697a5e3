"""Opt-in int8 linears for CPU decoding (``--gen-dtype int8``): int8 weights, int8 activations per row.

A bf16 decode step on our CPUs is bound by its matrix products (75-80% of op time), and an int8 product on a CPU
with AVX-512 VNNI runs about twice as fast (measured 0.24 vs 0.41 ms at 8 rows, 0.91 vs 1.72 ms at 64 rows for a
4864x896 matrix). :class:`Int8Linear` stores the weight as int8 with one scale per output channel and quantizes
each input row with its own scale at call time (symmetric, round to nearest), multiplies with int32 accumulation
(``torch._int_mm``) and rescales: a row's result never depends on the other rows of its batch (torch's dynamic
quantization scales the whole batch at once, so it would). Outputs change (about 1% relative error per product),
so it is opt-in and the benchmark reports how often the decoded tokens agree with the float model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

LEVELS = 127


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)`` with ``x ≈ q * scale``: int8 ``q`` and one float32 scale per row (last dimension)."""
    scale = x.abs().amax(-1, keepdim=True).clamp_min(1e-12) / LEVELS
    return torch.round(x / scale).clamp_(-LEVELS, LEVELS).to(torch.int8), scale


class Int8Linear(nn.Module):
    """``nn.Linear`` with int8 weights (per output channel) and int8 activations (per row); float32 out."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        q, scale = quantize_rows(linear.weight.detach().float())
        self.register_buffer("weight_t", q.t().contiguous())  # [in, out]
        self.register_buffer("weight_scale", scale[:, 0])
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        q, scale = quantize_rows(rows)
        y = torch._int_mm(q, self.weight_t).float() * scale * self.weight_scale
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def int8_copy(model: nn.Module) -> nn.Module:
    """A float32 copy of ``model`` whose every ``nn.Linear`` (the LM head included) is an :class:`Int8Linear`."""
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("int8 linears run on CPU only (torch._int_mm)")
    out = copy.deepcopy(model).float().eval()
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, Int8Linear(child))
    return out
