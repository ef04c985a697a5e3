"""Hook sites, activation patching and attention knockout on tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.causal.inputs import Example, build_batch, knockout_inputs
from interp.causal.metrics import opener_tokens
from interp.causal.patching import heatmap_matrix, knockout_effects, pair_up, patch_hook, patching_sweep
from interp.causal.runner import SpanRunner, read
from interp.causal.synthetic import toy_examples
from interp.model.hooks import Inputs, mlp_in, mlp_out, resid_post, resid_pre, run_with_hooks
from interp.spans.derive import derive_safety_spans
from interp.stats import mean_ci
from interp.testing import tiny_model


@pytest.fixture(scope="module")
def setup():
    model, tok = tiny_model("qwen2", n_layers=3)
    return model, tok, derive_safety_spans(tok), toy_examples(tok), opener_tokens(tok)


def test_sites_match_transformer_bridge(setup):
    from transformer_lens.model_bridge import TransformerBridge

    model, tok, span, examples, _ = setup
    batch = build_batch(examples[:2], 4, span, tok.pad_token_id)
    names = (resid_pre(1), resid_post(1), mlp_in(2), mlp_out(0))
    # (no explicit positions here: the bridge derives them from the mask like HF does)
    logits, ours = run_with_hooks(model, Inputs(batch.inputs.input_ids, batch.inputs.attention_mask), capture=names)
    bridge = TransformerBridge.boot_transformers("tiny", hf_model=model, tokenizer=tok, device="cpu")
    _, theirs = bridge.run_with_cache(batch.inputs.input_ids, attention_mask=batch.inputs.attention_mask,
                                      names_filter=lambda n: n in names)
    for n in names:
        torch.testing.assert_close(ours[n], theirs[n], rtol=0, atol=1e-5)


def test_patching_a_run_with_itself_changes_nothing(setup):
    model, tok, span, examples, openers = setup
    batch = build_batch(examples, 6, span, tok.pad_token_id)
    runner = SpanRunner(model, batch)
    clean = read(runner, openers, capture=(resid_post(1),))
    logits, _, masses = runner.run(openers=openers)
    for where in ("probe", "span"):
        hook = patch_hook(batch, batch, clean.cache[resid_post(1)], where)
        plogits, _, pmasses = runner.run({resid_post(1): hook}, openers=openers)
        assert torch.equal(plogits, logits) and torch.equal(pmasses["refusal"], masses["refusal"])


@pytest.mark.parametrize("site", [resid_pre(0), resid_post(0), resid_pre(2)])
def test_patching_everything_from_b_reproduces_b(setup, site):
    model, tok, span, examples, _ = setup
    a, b = examples[0], examples[4]
    n = min(len(a.prompt_ids) + len(a.response_ids), len(b.prompt_ids) + len(b.response_ids))
    ids_a = torch.tensor([list(a.prompt_ids + a.response_ids)[:n]])
    ids_b = torch.tensor([list(b.prompt_ids + b.response_ids)[:n]])
    assert not torch.equal(ids_a, ids_b)
    logits_b, cache_b = run_with_hooks(model, Inputs(ids_b), capture=(site,))
    logits_a, _ = run_with_hooks(model, Inputs(ids_a))
    patched, _ = run_with_hooks(model, Inputs(ids_a), {site: lambda x: cache_b[site]})
    assert not torch.allclose(logits_a, logits_b)
    assert torch.equal(patched, logits_b)


def test_span_patch_at_last_layer_gives_source_next_token_logits(setup):
    """The header's next-token logits come from the last layer's span vectors, so patching them there gives the
    source run's logits exactly. (The whole-opener refusal log-odds also read the span's keys and values at every
    layer through the opener tokens, so they move only part of the way: no longer a test of the patch.)"""
    model, tok, span, examples, openers = setup
    res = patching_sweep(model, examples, span, tok.pad_token_id, openers, depths=(0, 6), layers=(0, 2))
    assert res["n_pairs"] == [4, 4]
    last = [c for c in res["cells"] if c["layer"] == 2]
    assert len(last) == 4 and all(np.isfinite(c["d_refusal"]["mean"]) for c in res["cells"])
    harm, ben = pair_up(examples, 6)
    runner = SpanRunner(model, build_batch(harm + ben, 6, span, tok.pad_token_id))
    clean = read(runner, openers, capture=(resid_post(2),))
    n = len(harm)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    hook = patch_hook(runner.batch, runner.batch, clean.cache[resid_post(2)][partner], "span")
    logits, _, _ = runner.run()
    patched, _, _ = runner.run({resid_post(2): hook})
    torch.testing.assert_close(patched, logits[partner], rtol=1e-5, atol=1e-5)
    first = [c for c in res["cells"] if c["layer"] == 0]
    assert all(abs(c["fraction_of_gap"] - 1.0) > 1e-3 for c in first)
    mat = heatmap_matrix(res, "harmful<-benign")
    assert mat.shape == (2, 2) and torch.isfinite(torch.tensor(mat)).all()


def test_patch_probe_token_only_touches_that_position(setup):
    model, tok, span, examples, openers = setup
    h = build_batch(examples[:4], 5, span, tok.pad_token_id)
    b = build_batch(examples[4:], 5, span, tok.pad_token_id)
    src = read(SpanRunner(model, b), openers, capture=(resid_post(0),))  # [B, h, d] at the span
    hook = patch_hook(h, b, src.cache[resid_post(0)], "probe")
    # the hook runs on the full sequence here, so "nowhere else" covers prompt, response and padding too
    _, cache = run_with_hooks(model, h.inputs, {resid_post(0): hook}, capture=(resid_post(0),))
    _, clean = run_with_hooks(model, h.inputs, capture=(resid_post(0),))
    diff = (cache[resid_post(0)] - clean[resid_post(0)]).abs().sum(-1)
    rows = torch.arange(4)
    assert (diff[rows, h.probe_pos] > 0).all()
    diff[rows, h.probe_pos] = 0
    assert diff.max() == 0
    torch.testing.assert_close(cache[resid_post(0)][rows, h.probe_pos], src.cache[resid_post(0)][rows, span.probe_index])


def test_knockout_mask(setup):
    model, tok, span, examples, openers = setup
    b0 = build_batch(examples, 0, span, tok.pad_token_id)
    plain, _ = run_with_hooks(model, b0.inputs)
    ko, _ = run_with_hooks(model, knockout_inputs(b0))
    real = b0.inputs.attention_mask.bool()
    torch.testing.assert_close(ko[real], plain[real], rtol=0, atol=1e-5)
    b = build_batch(examples, 6, span, tok.pad_token_id)
    plain, _ = run_with_hooks(model, b.inputs)
    ko, _ = run_with_hooks(model, knockout_inputs(b))
    before_span = torch.arange(b.inputs.input_ids.shape[1])[None, :] < b.span_pos[:, :1]
    before_span &= b.inputs.attention_mask.bool()  # (left padding rows differ: they see nothing vs themselves)
    torch.testing.assert_close(ko[before_span], plain[before_span], rtol=0, atol=1e-5)
    rows = torch.arange(len(b.examples))
    assert (ko[rows, b.last_pos] - plain[rows, b.last_pos]).abs().amax(-1).min() > 1e-3
    # Reference: the span re-encoded right after the prompt with the response's positions skipped.
    ex: Example = b.examples[0]
    ids = torch.tensor([list(ex.prompt_ids) + list(span.span_ids)])
    pos = torch.tensor([list(range(len(ex.prompt_ids))) + [len(ex.prompt_ids) + 6 + i for i in range(len(span.span_ids))]])
    # (an explicit mask is needed: with position_ids alone transformers 5.x guesses packed sequences)
    ref, _ = run_with_hooks(model, Inputs(ids, torch.ones_like(ids), pos))
    torch.testing.assert_close(ko[0, b.span_pos[0]], ref[0, -len(span.span_ids):], rtol=0, atol=1e-4)
    rows_out = knockout_effects(model, examples, span, tok.pad_token_id, openers, depths=(0, 6))
    assert {r["label"] for r in rows_out} == {"harmful", "benign"}
    assert all(abs(r["d_refusal"]["mean"]) < 1e-5 for r in rows_out if r["depth"] == 0)


def test_mean_ci_covers_mean():
    ci = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert ci["lo"] <= ci["mean"] <= ci["hi"] and ci["n"] == 4 and ci["mean"] == 2.5


def test_causal_probe_readout_is_the_probe_logit():
    """The causal code reads a ProbeSet as logits (ProbeSet.score is a probability; mixing them was a defect)."""
    import numpy as np

    from interp.causal.experiment import ProbeAdapter
    from interp.causal.metrics import probe_logits
    from interp.probes.probeset import ProbeSet

    rng = np.random.default_rng(0)
    ps = ProbeSet(layers=[1], weights=rng.normal(size=(1, 8)), bias=np.array([0.3]),
                  hook="blocks.{layer}.hook_resid_post", position="probe", best_layer=1, threshold=0.5)
    h = torch.randn(5, 8)
    got = probe_logits(ProbeAdapter(ps), h, 1)
    torch.testing.assert_close(got, torch.as_tensor(ps.logit(h.numpy(), 1), dtype=torch.float64), rtol=1e-6, atol=1e-6)
    assert (got < 0).any() and (got > 0).any()  # logits, not probabilities in (0, 1)


def test_full_forward_knockout_refuses_kernels_without_custom_masks():
    """The full-forward knockout passes a 4-D mask: with a flash / flex kernel it is a one-line error."""
    from interp import UserError
    from interp.spans.derive import derive_safety_spans

    model, tok = tiny_model("qwen2", n_layers=2)
    batch = build_batch(toy_examples(tok)[:2], 4, derive_safety_spans(tok), tok.pad_token_id)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(UserError, match="attention knockout"):
        SpanRunner(model, batch, cached=False).run(knockout=True)


@pytest.mark.parametrize("where", ["last_token", "prompt", "t_inst"])
def test_patching_a_position_before_the_span_edits_that_token_only(setup, where):
    """The prefix positions ``anydepth positions`` reads can be patched: the column holds the right token, the edit
    touches it alone, and it reaches the span (the probe moves) in the sweep's whole-sequence forwards."""
    from interp.causal.runner import span_cols
    from interp.spans.controls import derive_controls

    model, tok, span, examples, openers = setup
    suffix = len(derive_controls(tok, span).prompt_suffix_ids)
    d = 5
    h = build_batch(examples[:4], d, span, tok.pad_token_id)
    b = build_batch(examples[4:], d, span, tok.pad_token_id)
    for batch in (h, b):
        batch.prompt_suffix_len = suffix
    rows, cols = span_cols(h, where)
    want = {"last_token": [e.response_ids[d - 1] for e in h.examples],
            "prompt": [e.prompt_ids[-1] for e in h.examples],
            "t_inst": [e.prompt_ids[-suffix - 1] for e in h.examples]}[where]
    assert h.inputs.input_ids[rows, cols].tolist() == list(want)
    assert tok.decode([want[0]]) != tok.decode([h.examples[0].prompt_ids[-suffix]])  # t_inst precedes the suffix
    _, src = run_with_hooks(model, b.inputs, capture=(resid_post(0),))
    hook = patch_hook(h, b, src[resid_post(0)], where)
    _, cache = run_with_hooks(model, h.inputs, {resid_post(0): hook}, capture=(resid_post(0),))
    _, clean = run_with_hooks(model, h.inputs, capture=(resid_post(0),))
    diff = (cache[resid_post(0)] - clean[resid_post(0)]).abs().sum(-1)
    assert (diff[rows, cols] > 0).all()
    diff[rows, cols] = 0
    assert diff.max() == 0
    res = patching_sweep(model, examples, span, tok.pad_token_id, openers, depths=(d,), layers=(0,), where=where,
                         prompt_suffix_len=suffix)
    assert res["where"] == where and res["n_pairs"] == [4]
    assert all(abs(c["d_refusal"]["mean"]) > 0 for c in res["cells"])  # the edit reaches the reply after the span


def test_patching_at_t_inst_needs_the_prompt_suffix(setup):
    from interp import UserError

    model, tok, span, examples, openers = setup
    with pytest.raises(UserError, match="prompt_suffix_len"):
        patching_sweep(model, examples, span, tok.pad_token_id, openers, depths=(4,), layers=(0,), where="t_inst")
    with pytest.raises(UserError, match="unknown patch position"):
        patching_sweep(model, examples, span, tok.pad_token_id, openers, depths=(4,), layers=(0,), where="user")


def test_one_span_token_can_be_patched_and_position_is_an_alias_of_where(setup):
    from interp.causal.runner import span_cols
    from interp.cli.registry import build_parser

    model, tok, span, examples, _ = setup
    batch = build_batch(examples[:2], 4, span, tok.pad_token_id)
    _, cols = span_cols(batch, "1")
    assert cols.tolist() == [1 - len(span.span_ids)] * 2
    assert span_cols(batch, str(span.probe_index))[1].tolist() == span_cols(batch, "probe")[1].tolist()
    args = build_parser().parse_args(["patch", "--position", "t_inst"])
    assert args.where == "t_inst"
