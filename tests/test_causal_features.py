"""Feature ranking, probe relation and top-k feature ablation with synthetic transcoders."""

from __future__ import annotations

import pytest
import torch

from interp.causal.features import (
    decoder_cosines,
    direct_probe_attribution,
    rank_features,
    span_features,
    topk_ablation,
)
from interp.causal.inputs import build_batch
from interp.causal.metrics import opener_tokens
from interp.causal.synthetic import toy_examples
from interp.causal.transcoders import new_transcoder
from interp.model.hooks import mlp_in, run_with_hooks
from interp.spans.derive import derive_safety_spans
from interp.testing import tiny_model


def planted_transcoder(d: int, d_sae: int, feature: int, v: torch.Tensor, threshold: float, seed: int = 0):
    """Random transcoder whose ``feature`` fires on inputs with (x·v) > threshold; others ⟂ v."""
    g = torch.Generator().manual_seed(seed)
    tc = new_transcoder(d, d_sae, d)
    u = v / v.norm()
    with torch.no_grad():
        w = torch.randn(d, d_sae, generator=g) / d**0.5
        w -= u[:, None] * (u @ w)[None, :]
        w[:, feature] = u
        tc.W_enc.copy_(w)
        tc.b_enc.copy_(torch.full((d_sae,), 0.05))
        tc.b_enc[feature] = -threshold
        tc.W_dec.copy_(torch.randn(d_sae, d, generator=g) / d**0.5)
    return tc


def test_planted_feature_is_ranked_first_synthetic():
    g = torch.Generator().manual_seed(0)
    d, f = 16, 7
    v = torch.randn(d, generator=g)
    v /= v.norm()
    x_h = 0.3 * torch.randn(40, d, generator=g) + 2.0 * v
    x_b = 0.3 * torch.randn(40, d, generator=g)
    tc = planted_transcoder(d, 32, f, v, threshold=1.0)
    with torch.no_grad():
        ranked = rank_features(tc.encode(x_h), tc.encode(x_b), top=5, n_boot=200)
    assert ranked[0]["feature"] == f
    assert ranked[0]["lo"] > 1.0 and ranked[0]["lo"] <= ranked[0]["d"] <= ranked[0]["hi"]
    assert ranked[0]["freq_harmful"] > 0.9 and ranked[0]["freq_benign"] < 0.1
    assert all(abs(r["d"]) < ranked[0]["d"] for r in ranked[1:])


@pytest.fixture(scope="module")
def setup():
    model, tok = tiny_model("qwen2", n_layers=2)
    return model, tok, derive_safety_spans(tok), toy_examples(tok, n_per_label=6), opener_tokens(tok)


def test_planted_feature_recovered_through_the_model(setup):
    model, tok, span, examples, _ = setup
    means = {}
    for label in ("harmful", "benign"):
        batch = build_batch([e for e in examples if e.label == label], 4, span, tok.pad_token_id)
        _, cache = run_with_hooks(model, batch.inputs, capture=(mlp_in(1),))
        means[label] = cache[mlp_in(1)][torch.arange(len(batch.examples)), batch.probe_pos].mean(0)
    v = means["harmful"] - means["benign"]
    mid = float((means["harmful"] + means["benign"]) @ (v / v.norm())) / 2
    tc = planted_transcoder(v.numel(), 128, 42, v, threshold=mid)
    acts = span_features(model, tc, 1, examples, span, tok.pad_token_id, depths=(4,), where="probe")
    assert acts["harmful"].shape == (6, 128) and acts["benign"].shape == (6, 128)
    ranked = rank_features(acts["harmful"], acts["benign"], top=3, n_boot=100)
    assert ranked[0]["feature"] == 42 and ranked[0]["d"] > 0


def test_decoder_cosine_and_direct_attribution():
    g = torch.Generator().manual_seed(1)
    tc = new_transcoder(8, 16, 8)
    w = torch.randn(8, generator=g)
    with torch.no_grad():
        tc.W_dec[5] = 3.0 * w
        tc.b_dec.copy_(torch.randn(8, generator=g))
    cos = decoder_cosines(tc, w)
    assert cos[5].item() == pytest.approx(1.0, abs=1e-6) and cos.abs().max() <= 1 + 1e-9
    x = torch.randn(10, 8, generator=g)
    with torch.no_grad():
        acts = tc.encode(x)
        total = direct_probe_attribution(acts, tc, w).sum(1) + tc.b_dec.double() @ w.double()
        torch.testing.assert_close(total, tc(x).double() @ w.double(), rtol=0, atol=1e-5)


def test_topk_ablation_k0_is_exact_and_k_changes_refusal(setup):
    model, tok, span, examples, openers = setup
    d = model.config.hidden_size
    tc = planted_transcoder(d, 64, 3, torch.randn(d, generator=torch.Generator().manual_seed(2)), 0.0)
    with torch.no_grad():
        tc.W_dec.mul_(20.0)
    means = torch.full((64,), 0.5)
    for mode in ("zero", "mean"):
        res = topk_ablation(model, tc, 1, examples, span, tok.pad_token_id, openers, depths=(4,),
                            ranked=list(range(64)), ks=(0, 8), mode=mode, means=means, n_random=2)
        rows = {(r["label"], r["k"]): r for r in res["rows"]}
        for label in ("harmful", "benign"):
            assert rows[(label, 0)]["d_refusal"]["mean"] == 0.0
            assert rows[(label, 0)]["d_refusal_random_mean"] == 0.0
            assert rows[(label, 8)]["d_refusal"]["mean"] != 0.0
