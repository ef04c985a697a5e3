"""The packed tree mask and the piggyback check equal the slow obvious computations (float32)."""

from __future__ import annotations

import pytest
import torch

from interp.extract.masks import (
    attention_layout,
    collate,
    piggyback_inputs,
    plan_packed,
    span_over_cache_inputs,
)
from interp.spans.derive import derive_safety_spans
from interp.testing import tiny_model

ARCHS = ["llama", "qwen2", "gemma2"]
WINDOW = 32


def _span_ids(tok) -> list[int]:
    return list(derive_safety_spans(tok).span_ids)


@pytest.fixture(scope="module", params=ARCHS)
def model_tok(request):
    model, tok = tiny_model(request.param, n_layers=2, d_model=64, seed=1, sliding_window=WINDOW)
    return model, tok


def _layer_outputs(model, **kwargs) -> list[torch.Tensor]:
    """Residual stream after every decoder layer ([B, S, d] each) from one plain forward."""
    outs: list[torch.Tensor] = []
    handles = [layer.register_forward_hook(lambda m, a, o: outs.append(o[0] if isinstance(o, tuple) else o))
               for layer in model.model.layers]
    try:
        with torch.no_grad():
            model.model(**kwargs)
    finally:
        for hd in handles:
            hd.remove()
    return outs


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _random_ids(tok, n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, len(tok) - 10, (n,), generator=g).tolist()


def _reencode(model, prompt, response, span, d) -> list[torch.Tensor]:
    ids = torch.tensor([prompt + response[:d] + span])
    return [o[0, -len(span):] for o in _layer_outputs(model, input_ids=ids)]


def test_plan_layout_and_invalid_depths():
    plan = plan_packed([1, 2, 3], [4, 5, 6, 7], [8, 9], [0, 2, 4, 6])
    assert plan.valid == (True, True, True, False)
    assert plan.input_ids == (1, 2, 3, 4, 5, 6, 7, 8, 9, 8, 9, 8, 9)  # no copy for the invalid depth
    assert plan.position_ids[7:] == (3, 4, 5, 6, 7, 8)
    assert plan.span_start == (7, 9, 11, -1)
    assert plan.last_token_index == (2, 4, 6, -1)
    with pytest.raises(ValueError):
        plan_packed([1], [2], [3], [2, 1])
    with pytest.raises(ValueError):
        plan_packed([], [2], [3], [0])


def test_mask_blocks_later_tokens_and_other_copies():
    plan = plan_packed([1, 2], [3, 4, 5], [6, 7], [1, 3])
    batch = collate([plan], pad_id=0)
    allowed = batch.attention_mask[0, 0] == 0
    first = plan.span_start[0]
    assert allowed[first, :3].all() and not allowed[first, 3:first].any()  # sees P + 1 tokens
    assert allowed[first + 1, first] and not allowed[first, first + 1]  # causal inside the copy
    second = plan.span_start[1]
    assert not allowed[second, first:second].any()  # never sees another copy


def test_packed_equals_reencoding_every_depth(model_tok):
    model, tok = model_tok
    span = _span_ids(tok)
    prompt, response = _random_ids(tok, 9, 0), _random_ids(tok, 70, 1)
    depths = [0, 1, 5, 20, 40, 60, 70, 90]  # beyond the sliding window (32) and beyond the response
    plan = plan_packed(prompt, response, span, depths)
    window, types = attention_layout(model.config)
    if model.config.model_type == "gemma2":
        assert window == WINDOW and isinstance(
            collate([plan], tok.pad_token_id, sliding_window=window, layer_types=types).attention_mask, dict)
    batch = collate([plan], tok.pad_token_id, sliding_window=window, layer_types=types)
    outs = _layer_outputs(model, input_ids=batch.input_ids, position_ids=batch.position_ids,
                          attention_mask=batch.attention_mask)
    assert batch.valid[0].tolist() == [d <= 70 for d in depths]
    for k, d in enumerate(depths):
        if d > len(response):
            assert (batch.span_index[0, k] == -1).all()
            continue
        ref = _reencode(model, prompt, response, span, d)
        for layer, (o, r) in enumerate(zip(outs, ref)):
            got = o[0, batch.span_index[0, k]]
            assert _rel(got, r) < 1e-5, (model.config.model_type, d, layer, _rel(got, r))
        # the last-token baseline reads the main sequence at P + d - 1
        plain = _layer_outputs(model, input_ids=torch.tensor([prompt + response[:max(d, 0)]]))
        assert _rel(outs[-1][0, batch.last_token_index[0, k]], plain[-1][0, -1]) < 1e-5


def test_window_is_needed_for_sliding_models():
    """Without the per-layer-type window the deep depths of Gemma-2 are wrong (the test can fail)."""
    model, tok = tiny_model("gemma2", n_layers=2, d_model=64, seed=1, sliding_window=WINDOW)
    span = _span_ids(tok)
    prompt, response = _random_ids(tok, 9, 0), _random_ids(tok, 70, 1)
    plan = plan_packed(prompt, response, span, [60])
    batch = collate([plan], tok.pad_token_id)  # no window
    outs = _layer_outputs(model, input_ids=batch.input_ids, position_ids=batch.position_ids,
                          attention_mask=batch.attention_mask)
    ref = _reencode(model, prompt, response, span, 60)
    assert _rel(outs[-1][0, batch.span_index[0, 0]], ref[-1]) > 1e-3


def test_batched_with_padding_equals_one_at_a_time(model_tok):
    model, tok = model_tok
    span = _span_ids(tok)
    window, types = attention_layout(model.config)
    depths = [0, 3, 10, 45]
    plans = [plan_packed(_random_ids(tok, p, 10 + i), _random_ids(tok, r, 20 + i), span, depths)
             for i, (p, r) in enumerate([(5, 50), (12, 8), (7, 30)])]
    batch = collate(plans, tok.pad_token_id, sliding_window=window, layer_types=types)
    outs = _layer_outputs(model, input_ids=batch.input_ids, position_ids=batch.position_ids,
                          attention_mask=batch.attention_mask)
    for b, plan in enumerate(plans):
        one = collate([plan], tok.pad_token_id, sliding_window=window, layer_types=types)
        ref = _layer_outputs(model, input_ids=one.input_ids, position_ids=one.position_ids,
                             attention_mask=one.attention_mask)
        n = plan.length
        for o, r in zip(outs, ref):
            assert _rel(o[b, :n], r[0, :n]) < 1e-5
        assert torch.equal(batch.span_index[b], one.span_index[0])
        assert torch.equal(batch.valid[b], one.valid[0])


def _prefix_cache(model, prefix):
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=torch.tensor([prefix]), cache=cache, use_cache=True)
    return cache


def test_span_over_cache_equals_reencoding(model_tok):
    model, tok = model_tok
    span = _span_ids(tok)
    prefix = _random_ids(tok, 50, 3)
    cache = _prefix_cache(model, prefix)
    ids, pos = span_over_cache_inputs(span, len(prefix))
    with torch.no_grad():
        got = model(input_ids=ids, position_ids=pos, cache=cache, use_cache=True).logits[0]
        ref = model(input_ids=torch.tensor([prefix + span])).logits[0, -len(span):]
    assert _rel(got, ref) < 1e-5


@pytest.mark.parametrize("n_prefix", [20, 50])
def test_piggyback_equals_decode_step_plus_check(model_tok, n_prefix):
    _check_piggyback(*model_tok, n_prefix)


def _check_piggyback(model, tok, n_prefix: int) -> None:
    span = _span_ids(tok)
    prefix = _random_ids(tok, n_prefix, 4)
    t = _random_ids(tok, 1, 5)
    window, types = attention_layout(model.config)
    with torch.no_grad():
        step_cache = _prefix_cache(model, prefix)
        step = model(input_ids=torch.tensor([t]), cache=step_cache, use_cache=True).logits[0, -1]
        check_cache = _prefix_cache(model, prefix)
        ids, pos = span_over_cache_inputs(span, n_prefix)
        check = model(input_ids=ids, position_ids=pos, cache=check_cache, use_cache=True).logits[0]
        pig_cache = _prefix_cache(model, prefix)
        ids, pos, mask = piggyback_inputs(torch.tensor(t), span, n_prefix, sliding_window=window,
                                          layer_types=types)
        pig = model(input_ids=ids, position_ids=pos, attention_mask=mask, cache=pig_cache,
                    use_cache=True).logits[0]
    assert _rel(pig[0], step) < 1e-5
    assert _rel(pig[1:], check) < 1e-5
    # full-attention layers hold prefix ‖ t ‖ span; the first n+1 entries equal the decode step's cache
    for layer, (a, b) in enumerate(zip(pig_cache.layers, step_cache.layers)):
        if types is None or types[layer] == "full_attention":
            assert _rel(a.keys[:, :, :n_prefix + 1], b.keys) < 1e-6


def test_piggyback_with_left_padded_prefix():
    model, tok = tiny_model("qwen2", n_layers=2, d_model=64, seed=2)
    span = _span_ids(tok)
    short, long_ = _random_ids(tok, 6, 7), _random_ids(tok, 10, 8)
    pad = tok.pad_token_id
    t = torch.tensor(_random_ids(tok, 2, 9))
    rows = [[pad] * 4 + short, long_]
    prefix_mask = torch.tensor([[0] * 4 + [1] * 6, [1] * 10])
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    pre_pos = (prefix_mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        model(input_ids=torch.tensor(rows), attention_mask=prefix_mask, position_ids=pre_pos, cache=cache,
              use_cache=True)
        ids, pos, mask = piggyback_inputs(t, span, 10, prefix_mask=prefix_mask, positions=prefix_mask.sum(-1))
        got = model(input_ids=ids, position_ids=pos, attention_mask=mask, cache=cache, use_cache=True).logits
        for b, real in enumerate([short, long_]):
            ref_t = model(input_ids=torch.tensor([real + [int(t[b])]])).logits[0, -1]
            ref_span = model(input_ids=torch.tensor([real + span])).logits[0, -len(span):]
            assert _rel(got[b, 0], ref_t) < 1e-5
            assert _rel(got[b, 1:], ref_span) < 1e-5


def test_packed_equals_reencoding_with_sdpa():
    model, tok = tiny_model("qwen2", n_layers=2, d_model=64, seed=3)
    model.set_attn_implementation("sdpa")
    span = _span_ids(tok)
    prompt, response = _random_ids(tok, 9, 0), _random_ids(tok, 40, 1)
    plan = plan_packed(prompt, response, span, [0, 17, 40])
    batch = collate([plan, plan_packed(prompt, response[:20], span, [0, 17, 40])], tok.pad_token_id)
    outs = _layer_outputs(model, input_ids=batch.input_ids, position_ids=batch.position_ids,
                          attention_mask=batch.attention_mask)
    for k, d in enumerate(plan.depths):
        ref = _reencode(model, prompt, response, span, d)
        assert _rel(outs[-1][0, batch.span_index[0, k]], ref[-1]) < 1e-5


def test_inputs_are_built_on_the_device_of_their_tensors():
    """GPU defect class, checked on the 'meta' device (mixing it with CPU tensors fails like cuda:0 + cpu):
    piggyback inputs follow the tokens' device, and extraction's gather follows the site tensor's device
    (with device_map the layers sit on other GPUs than the batch)."""
    from interp.extract.packed import gather_rows

    meta = torch.device("meta")
    t = torch.tensor([5, 6], device=meta)
    prefix = torch.ones((2, 7), dtype=torch.long, device=meta)
    for window, types in ((None, None), (4, ["sliding_attention", "full_attention"])):
        ids, pos, mask = piggyback_inputs(t, [1, 2, 3], 7, prefix_mask=prefix, positions=torch.tensor([7, 6]),
                                          sliding_window=window, layer_types=types)
        masks = mask.values() if isinstance(mask, dict) else [mask]
        assert ids.device == pos.device == meta and all(m.device == meta for m in masks)
    plan = plan_packed([1, 2, 3], [4, 5, 6, 7], [8, 9], [0, 2, 4])
    batch = collate([plan, plan], 0)  # on the CPU
    acts, last, prompt = gather_rows(torch.zeros((2, plan.length, 16), device=meta), batch, torch.tensor([0, 1]))
    assert acts.device == last.device == prompt.device == meta
    assert acts.shape == (2, 3, 2, 16) and last.shape == (2, 3, 16) and prompt.shape == (2, 16)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # transformers has no sdpa path for Gemma-2
def test_piggyback_equals_decode_step_plus_check_sdpa(arch):
    """The piggyback mask under the sdpa kernel (float32): the same as a decode step and a separate check."""
    model, tok = tiny_model(arch, n_layers=2, d_model=64, seed=1, sliding_window=WINDOW)
    model.set_attn_implementation("sdpa")
    _check_piggyback(model, tok, 50)
