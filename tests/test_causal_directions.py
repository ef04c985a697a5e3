"""Directional ablation / steering at span positions on tiny random models."""

from __future__ import annotations

import pytest
import torch

from interp.causal.directions import diff_of_means, direction_effects, direction_hooks, random_directions
from interp.causal.inputs import build_batch
from interp.causal.metrics import opener_tokens
from interp.causal.synthetic import toy_examples
from interp.model.hooks import resid_post, resid_pre, run_with_hooks
from interp.spans.derive import derive_safety_spans
from interp.testing import tiny_model


@pytest.fixture(scope="module")
def setup():
    model, tok = tiny_model("llama", family="qwen2", n_layers=2)
    return model, tok, derive_safety_spans(tok), toy_examples(tok), opener_tokens(tok)


@pytest.mark.parametrize("site", [resid_pre(1), resid_post(0)])
@pytest.mark.parametrize("where", ["span", "probe"])
def test_ablation_removes_projection_exactly_there_and_nowhere_else(setup, site, where):
    model, tok, span, examples, _ = setup
    batch = build_batch(examples, 5, span, tok.pad_token_id)
    u = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    _, clean = run_with_hooks(model, batch.inputs, capture=(site,))
    hooks = direction_hooks(batch, [site], u, "ablate", where=where)
    _, ablated = run_with_hooks(model, batch.inputs, hooks, capture=(site,))
    unit = u.double() / u.double().norm()
    x0, x1 = clean[site].double(), ablated[site].double()
    chosen = torch.zeros(x0.shape[:2], dtype=torch.bool)
    b = torch.arange(len(batch.examples))
    if where == "span":
        chosen[b[:, None], batch.span_pos] = True
    else:
        chosen[b, batch.probe_pos] = True
    assert (x1[chosen] @ unit).abs().max() < 1e-5
    assert (x0[chosen] @ unit).abs().min() > 1e-3
    torch.testing.assert_close(x1[chosen], x0[chosen] - (x0[chosen] @ unit)[:, None] * unit, rtol=0, atol=1e-5)
    assert torch.equal(x1[~chosen], x0[~chosen])


def test_steering_with_zero_alpha_is_identity(setup):
    model, tok, span, examples, _ = setup
    batch = build_batch(examples, 3, span, tok.pad_token_id)
    u = torch.randn(model.config.hidden_size)
    plain, _ = run_with_hooks(model, batch.inputs)
    steered0, _ = run_with_hooks(model, batch.inputs, direction_hooks(batch, [resid_pre(0), resid_pre(1)], u,
                                                                       "steer", alpha=0.0, scale=10.0))
    assert torch.equal(plain, steered0)
    steered, _ = run_with_hooks(model, batch.inputs, direction_hooks(batch, [resid_pre(1)], u, "steer",
                                                                     alpha=1.0, scale=10.0))
    real = batch.inputs.attention_mask.bool().clone()
    before = torch.arange(real.shape[1])[None, :] < batch.span_pos[:, :1]
    assert torch.equal(steered[before & real], plain[before & real])
    assert not torch.allclose(steered[torch.arange(len(batch.examples)), batch.last_pos],
                              plain[torch.arange(len(batch.examples)), batch.last_pos])


def test_random_directions_are_unit_and_seeded():
    a, b = random_directions(16, 5, seed=3), random_directions(16, 5, seed=3)
    assert torch.equal(a, b)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(5, dtype=torch.float64))


def test_direction_effects_with_controls(setup):
    model, tok, span, examples, openers = setup
    dom = diff_of_means(model, examples, span, tok.pad_token_id, openers, depths=(0, 4), layer=0)
    assert dom.shape == (model.config.hidden_size,) and torch.isfinite(dom).all()
    res = direction_effects(model, examples, span, tok.pad_token_id, openers, directions={"dom": dom}, depths=(4,),
                            layers=(0, 1), mode="steer", alphas=(0.0, 0.5), n_random=3)
    rows = res["rows"]
    assert len(rows) == 2 * 2  # labels x alphas
    for r in rows:
        assert len(r["random_means"]) == 3
        assert 0 < r["p_vs_random"] <= 1
        if r["alpha"] == 0.0:
            assert r["real"]["mean"] == 0.0 and r["random_means"] == [0.0, 0.0, 0.0]
        else:
            assert r["real"]["mean"] != 0.0
    abl = direction_effects(model, examples, span, tok.pad_token_id, openers, directions={"dom": dom}, depths=(4,),
                            layers=(1,), mode="ablate", n_random=2)
    assert {r["label"] for r in abl["rows"]} == {"harmful", "benign"}
