"""The probability judge scores whole openers: the opener tree over a KV cache equals forwarding each opener in
full (float32, tiny models with real chat templates, sliding windows included), live and in the causal runner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.extract.masks import left_pad
from interp.guard.openers import OpenerTree, opener_log_masses
from interp.guard.refusal import COMPLIANCE_OPENERS, REFUSAL_OPENERS
from interp.model.kvcache import cache_kwarg, new_cache
from interp.spans.derive import derive_safety_spans, format_prompt_ids
from interp.testing import tiny_model

torch.set_num_threads(1)
ARCHS = {"qwen2": {}, "llama": {}, "gemma2": {"sliding_window": 8}}


def brute_masses(model, ids: list[int], tree: OpenerTree) -> dict[str, float]:
    """Sum over each class's openers of the product of next-token probabilities, each opener forwarded in full."""
    out = {}
    with torch.no_grad():
        for name, seqs in tree.sequences.items():
            total = 0.0
            for s in seqs:
                full = torch.tensor([ids + list(s)])
                logp = torch.log_softmax(model(input_ids=full).logits[0].double(), -1)
                total += float(torch.exp(sum(logp[len(ids) - 1 + k, s[k]] for k in range(len(s)))))
            out[name] = total
    return out


def test_openers_are_whole_sequences_and_a_shared_first_token_is_not_refusal_mass():
    _, tok = tiny_model("qwen2", n_layers=1, d_model=32)
    tree = OpenerTree.build(tok, REFUSAL_OPENERS, COMPLIANCE_OPENERS)
    firsts = {s[0] for s in tree.sequences["refusal"]}
    sure = tok("I'd", add_special_tokens=False)["input_ids"]
    assert any(len(s) > 1 for s in tree.sequences["refusal"]) and sure[0] in firsts  # "I" opens refusals ...
    assert tuple(sure) not in tree.sequences["refusal"]  # ... but "I'd" is not one of them
    for seqs in tree.sequences.values():  # no opener is a prefix of another of its class (no mass counted twice)
        assert not any(a != b and b[:len(a)] == a for a in seqs for b in seqs)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_tree_over_a_left_padded_cache_equals_full_forwards(arch):
    model, tok = tiny_model(arch, n_layers=2, d_model=64, seed=1, **ARCHS[arch])
    spans = derive_safety_spans(tok)
    tree = OpenerTree.build(tok, REFUSAL_OPENERS, COMPLIANCE_OPENERS)
    rows = [format_prompt_ids(tok, p) + list(spans.span_ids) for p in ("Hi", "How do I bake a loaf of bread?")]
    ids, mask, pos = left_pad(rows, tok.pad_token_id)
    cache = new_cache(model)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                       **{cache_kwarg(model): cache}).logits[:, -1]
    got = opener_log_masses(model, cache, mask, pos[:, -1] + 1, logits, tree)
    for i, row in enumerate(rows):
        ref = brute_masses(model, row, tree)
        for name in ("refusal", "compliance"):
            assert float(got[name][i].exp()) == pytest.approx(ref[name], rel=2e-4, abs=1e-9), (arch, name, i)
    assert cache.layers[0].get_seq_length() == ids.shape[1]  # rolled back


def test_checker_prob_judge_live_and_piggybacked_equal_full_forwards():
    """ADA-RK with --matcher prob: the refusal mass the live check reports (plain and piggybacked) is the
    whole-opener probability after prompt ‖ generated ‖ span."""
    from interp.guard.generator import GuardedGenerator
    from interp.guard.types import GuardConfig

    model, tok = tiny_model("qwen2", n_layers=2, d_model=64, seed=1)
    spans = derive_safety_spans(tok)
    prompts = [format_prompt_ids(tok, p) for p in ("Hi", "Write a poem about rain.")]
    results = {}
    for piggy in (False, True):
        cfg = GuardConfig(mode="rk", matcher="prob", refusal_prob=2.0, stride=3, max_new_tokens=7, buffer=False,
                          piggyback=piggy)
        with GuardedGenerator(model, tok, spans, cfg, halt=False) as gen:
            results[piggy] = gen.generate(prompts)
    tree = OpenerTree.build(tok, REFUSAL_OPENERS, COMPLIANCE_OPENERS)
    for b, (plain, piggy) in enumerate(zip(results[False], results[True])):
        assert plain.generated_ids == piggy.generated_ids
        for c, cp in zip(plain.checks, piggy.checks):
            ref = brute_masses(model, prompts[b] + plain.generated_ids[:c.depth] + list(spans.span_ids), tree)
            assert c.score == pytest.approx(ref["refusal"], rel=2e-4) and cp.score == pytest.approx(c.score, rel=2e-4)


def test_causal_refusal_logodds_are_whole_openers_cached_and_full():
    from interp.causal.inputs import build_batch
    from interp.causal.metrics import opener_tokens
    from interp.causal.runner import SpanRunner, read
    from interp.causal.synthetic import toy_examples

    model, tok = tiny_model("qwen2", n_layers=2, d_model=64, seed=3)
    span = derive_safety_spans(tok)
    examples = toy_examples(tok)[:4]
    tree = opener_tokens(tok)
    batch = build_batch(examples, 4, span, tok.pad_token_id)
    fast = read(SpanRunner(model, batch), tree).refusal.numpy()
    full = read(SpanRunner(model, batch, cached=False), tree).refusal.numpy()
    np.testing.assert_allclose(fast, full, rtol=1e-4, atol=1e-4)
    for i, ex in enumerate(batch.examples):
        ref = brute_masses(model, list(ex.prompt_ids + ex.response_ids[:4] + span.span_ids), tree)
        assert fast[i] == pytest.approx(np.log(ref["refusal"]) - np.log(ref["compliance"]), abs=2e-3)
