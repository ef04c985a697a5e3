"""The benchmark baselines compute exactly what packed extraction computes (so the ratios compare equal work)."""

from __future__ import annotations

import pytest
import torch

from interp.bench import ratio, round_orders, time_paths
from interp.extract.baselines import ada_scheme, plain_forward, reencode
from interp.extract.masks import attention_layout, collate, plan_packed
from interp.extract.packed import SpanReader
from interp.spans.derive import derive_safety_spans
from interp.testing import tiny_model

DEPTHS = [0, 3, 8, 20, 40]


def _rows(tok, n=3, P=7, R=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(20, len(tok) - 20, (P,), generator=g).tolist(),
             torch.randint(20, len(tok) - 20, (R,), generator=g).tolist()) for _ in range(n)]


def _packed(model, tok, rows, span, depths):
    window, types = attention_layout(model.config)
    plans = [plan_packed(p, r, span, depths) for p, r in rows]
    param = next(model.parameters())
    batch = collate(plans, tok.pad_token_id or 0, dtype=param.dtype, sliding_window=window, layer_types=types,
                    device=param.device)
    n = model.config.num_hidden_layers
    reader = SpanReader(model, ["resid_post"], list(range(n)), range(len(span)))
    try:
        out = reader.run(batch)["acts"]
    finally:
        reader.remove()
    valid = [k for k, d in enumerate(depths) if d <= len(rows[0][1])]
    return {layer: torch.from_numpy(out[("hook_resid_post", layer)])[:, valid] for layer in range(n)}


def _rel(a, b):
    return float((a - b).norm() / b.norm())


# float32: identical up to kernel rounding; bf16 (how a GPU runs them) within bf16 rounding through 3 layers.
# Gemma-2 has sliding-window layers (window 16 < the deepest row) and no sdpa path in transformers.
@pytest.mark.parametrize("arch,dtype,attn,tol", [
    ("qwen2", torch.float32, "sdpa", 1e-5), ("llama", torch.float32, "eager", 1e-5),
    ("gemma2", torch.float32, "eager", 1e-5), ("llama", torch.bfloat16, "sdpa", 2e-2),
    ("qwen2", torch.bfloat16, "sdpa", 2e-2)])
@pytest.mark.device
def test_baselines_equal_packed(arch, dtype, attn, tol, device):
    model, tok = tiny_model(arch, n_layers=3, d_model=64, seed=4, sliding_window=16)
    model = model.to(device=device, dtype=dtype)
    model.set_attn_implementation(attn)
    span = list(derive_safety_spans(tok).span_ids)
    rows = _rows(tok)
    ref = _packed(model, tok, rows, span, DEPTHS)
    for name, got in (("reencode", reencode(model, rows, span, DEPTHS)),
                      ("ada_copy", ada_scheme(model, rows, span, DEPTHS, copy=True)),
                      ("ada_rollback", ada_scheme(model, rows, span, DEPTHS, copy=False))):
        assert set(got) == set(ref), name
        for layer in ref:
            assert got[layer].shape == ref[layer].shape == (3, 4, len(span), 64), name  # depth 40 > R: skipped
            assert _rel(got[layer], ref[layer]) < tol, (name, layer, _rel(got[layer], ref[layer]))


def test_baseline_rows_must_share_lengths():
    model, tok = tiny_model("qwen2", n_layers=1)
    with pytest.raises(ValueError, match="share prompt and response lengths"):
        reencode(model, [([1, 2], [3]), ([1], [3])], [5], [0])


def test_plain_forward_runs_without_mask_or_positions():
    model, tok = tiny_model("qwen2", n_layers=1)
    plain_forward(model, torch.tensor([[5, 6, 7]]))


def test_time_paths_warms_each_path_and_alternates_the_order():
    calls = []
    times = time_paths({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up a, b; then a b / b a / a b
    assert round_orders(["x", "y", "z"], 2) == [["x", "y", "z"], ["z", "y", "x"]]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert ratio({"a": [2.0, 1.0], "b": [4.0, 5.0]}, "a", "b") == 0.25
    with pytest.raises(ValueError, match="repeats"):
        time_paths({"a": lambda: None}, repeats=0)
