"""The cached-prefix path (span forwarded over a KV cache of ``prompt ‖ response[:d]``) equals the full forward.

Tiny float32 models: Qwen2, Llama and Gemma-2 with a sliding window (12) far shorter than the rows (60-90
tokens), so windowed layers see only part of the prefix. Every experiment is run with ``cached=True`` and
``cached=False`` and compared; rows are also compared one at a time against an unpadded forward. The
``*_would_fail`` tests break the position ids and the cache rollback on purpose and check that the
comparisons used here notice.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.causal import runner as runner_mod
from interp.causal.directions import diff_of_means, direction_effects
from interp.causal.features import span_features, topk_ablation
from interp.causal.inputs import build_batch
from interp.causal.metrics import opener_tokens, refusal_logodds
from interp.causal.patching import knockout_effects, patch_hook, patching_sweep
from interp.causal.runner import SpanRunner, read
from interp.causal.synthetic import toy_examples
from interp.causal.transcoders import new_transcoder
from interp.guard.openers import opener_log_masses
from interp.model.hooks import mlp_in, resid_post, resid_pre
from interp.model.kvcache import cache_kwarg, new_cache
from interp.spans.derive import derive_safety_spans
from interp.testing import tiny_model

WINDOW = 12
DEPTHS = (0, 6)
RTOL, ATOL = 1e-5, 1e-6


class ToyProbe:
    """A random linear probe per layer (what the experiments need from a ProbeSet)."""

    def __init__(self, d: int, layers=(1, 2), seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.layers = list(layers)
        self.w = {L: torch.randn(d, generator=g, dtype=torch.float64) for L in layers}

    def logit(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        return hidden.double() @ self.w[layer].to(hidden.device)

    def direction(self, layer: int) -> torch.Tensor:
        return self.w[layer]


ARCHS = {"qwen2": {}, "llama": {"family": "qwen2"}, "gemma2": {"family": "qwen2", "sliding_window": WINDOW}}


@pytest.fixture(scope="module", params=list(ARCHS))
def setup(request):
    model, tok = tiny_model(request.param, n_layers=3, seed=2, **ARCHS[request.param])
    examples = toy_examples(tok)
    span = derive_safety_spans(tok)
    batch = build_batch(examples, DEPTHS[1], span, tok.pad_token_id)
    assert batch.width > 4 * WINDOW and len(set(batch.lengths.tolist())) > 2  # window matters; padding varies
    return model, tok, span, examples, opener_tokens(tok), ToyProbe(model.config.hidden_size)


def close(a, b):
    torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), rtol=RTOL, atol=ATOL)


def same_cells(fast: list[dict], full: list[dict]) -> None:
    """Result rows with the same keys and the same numbers (means of per-row effects, counts)."""
    assert len(fast) == len(full) and fast
    for a, b in zip(fast, full):
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], dict):
                assert a[k]["n"] == b[k]["n"]
                close(a[k]["mean"], b[k]["mean"])
            elif isinstance(a[k], float):
                close(a[k], b[k])
            elif isinstance(a[k], list) and a[k] and isinstance(a[k][0], float):
                close(a[k], b[k])
            else:
                assert a[k] == b[k], k


def readouts(r: SpanRunner, openers, probe, **kw):
    out = read(r, openers, probe, probe.layers, capture=(resid_pre(1), mlp_in(2)), **kw)
    return out.refusal, out.probe, out.cache


def assert_same_readout(a, b) -> None:
    close(a[0], b[0])
    for L in a[1]:
        close(a[1][L], b[1][L])
    for site in a[2]:
        close(a[2][site], b[2][site])


@pytest.mark.parametrize("knockout", [False, True])
def test_clean_and_knockout_readout_cached_equals_full(setup, knockout):
    model, tok, span, examples, openers, probe = setup
    for d in DEPTHS:
        batch = build_batch(examples, d, span, tok.pad_token_id)
        full = readouts(SpanRunner(model, batch, cached=False), openers, probe, knockout=knockout)
        fast_runner = SpanRunner(model, batch)
        fast = readouts(fast_runner, openers, probe, knockout=knockout)
        assert fast[2][resid_pre(1)].shape == (len(examples), len(span.span_ids), model.config.hidden_size)
        assert_same_readout(fast, full)
        # the same runner again after other runs: the rollback left exactly the prefix in the cache
        readouts(fast_runner, openers, probe, knockout=not knockout)
        assert_same_readout(readouts(fast_runner, openers, probe, knockout=knockout), fast)


@pytest.mark.parametrize("where", ["span", "probe"])
def test_patching_cached_equals_full(setup, where):
    model, tok, span, examples, openers, probe = setup
    kw = dict(depths=DEPTHS, layers=(0, 2), where=where, probe=probe, probe_layers=probe.layers)
    fast = patching_sweep(model, examples, span, tok.pad_token_id, openers, **kw)
    full = patching_sweep(model, examples, span, tok.pad_token_id, openers, cached=False, **kw)
    same_cells(fast["cells"], full["cells"])
    assert any(abs(c["d_refusal"]["mean"]) > 1e-3 for c in fast["cells"])  # the patches do something
    # per row, for one patch at a middle layer
    h = build_batch(examples[:4], 6, span, tok.pad_token_id)
    b = build_batch(examples[4:], 6, span, tok.pad_token_id)
    rows = {}
    for cached in (True, False):
        src = read(SpanRunner(model, b, cached), None, capture=(resid_post(1),))
        hook = patch_hook(h, b, src.cache[resid_post(1)], where)
        rows[cached] = readouts(SpanRunner(model, h, cached), openers, probe, hooks={resid_post(1): hook})
    assert_same_readout(rows[True], rows[False])


def test_knockout_effects_cached_equals_full(setup):
    model, tok, span, examples, openers, probe = setup
    kw = dict(depths=DEPTHS, probe=probe, probe_layers=probe.layers)
    fast = knockout_effects(model, examples, span, tok.pad_token_id, openers, **kw)
    full = knockout_effects(model, examples, span, tok.pad_token_id, openers, cached=False, **kw)
    same_cells(fast, full)
    assert any(abs(r["d_refusal"]["mean"]) > 1e-3 for r in fast if r["depth"] > 0)


def test_directions_cached_equals_full(setup):
    model, tok, span, examples, openers, _ = setup
    pad = tok.pad_token_id
    dom = diff_of_means(model, examples, span, pad, openers, depths=DEPTHS, layer=1)
    close(dom, diff_of_means(model, examples, span, pad, openers, depths=DEPTHS, layer=1, cached=False))
    for mode, alphas in (("ablate", (0.0,)), ("steer", (0.5,))):
        kw = dict(depths=DEPTHS, layers=(0, 1), mode=mode, alphas=alphas, n_random=2)
        fast = direction_effects(model, examples, span, pad, openers, directions={"dom": dom}, **kw)
        full = direction_effects(model, examples, span, pad, openers, directions={"dom": dom}, cached=False, **kw)
        same_cells(fast["rows"], full["rows"])
        assert any(abs(r["real"]["mean"]) > 1e-4 for r in fast["rows"])


def test_features_cached_equals_full(setup):
    model, tok, span, examples, openers, probe = setup
    d = model.config.hidden_size
    g = torch.Generator().manual_seed(3)
    tc = new_transcoder(d, 32, d)
    with torch.no_grad():
        tc.W_enc.copy_(torch.randn(d, 32, generator=g) / d**0.5)
        tc.W_dec.copy_(10 * torch.randn(32, d, generator=g) / d**0.5)
    for where in ("probe", "span"):
        fast = span_features(model, tc, 1, examples, span, tok.pad_token_id, depths=DEPTHS, where=where)
        full = span_features(model, tc, 1, examples, span, tok.pad_token_id, depths=DEPTHS, where=where,
                             cached=False)
        assert fast["groups"] == full["groups"]
        for label in ("harmful", "benign"):
            close(fast[label], full[label])
    kw = dict(depths=DEPTHS, ranked=list(range(32)), ks=(0, 4), n_random=2, probe=probe, probe_layers=probe.layers)
    fast = topk_ablation(model, tc, 1, examples, span, tok.pad_token_id, openers, **kw)
    full = topk_ablation(model, tc, 1, examples, span, tok.pad_token_id, openers, cached=False, **kw)
    same_cells(fast["rows"], full["rows"])
    assert any(abs(r["d_refusal"]["mean"]) > 1e-4 for r in fast["rows"] if r["k"] == 4)


@pytest.mark.parametrize("knockout", [False, True])
def test_batched_left_padded_rows_equal_one_at_a_time(setup, knockout):
    model, tok, span, examples, openers, probe = setup
    batch = build_batch(examples, 6, span, tok.pad_token_id)
    together = readouts(SpanRunner(model, batch), openers, probe, knockout=knockout)
    for i, ex in enumerate(examples):
        alone = readouts(SpanRunner(model, build_batch([ex], 6, span, tok.pad_token_id)), openers, probe,
                         knockout=knockout)
        close(together[0][i], alone[0][0])
        for L in probe.layers:
            close(together[1][L][i], alone[1][L][0])
        if not knockout:  # and the plain unpadded forward of the row (no explicit positions), its openers after it
            ids = torch.tensor([list(ex.prompt_ids + ex.response_ids[:6] + span.span_ids)])
            cache = new_cache(model)
            with torch.no_grad():
                logits = model(input_ids=ids, use_cache=True, **{cache_kwarg(model): cache}).logits[:, -1]
            masses = opener_log_masses(model, cache, torch.ones_like(ids), torch.tensor([ids.shape[1]]), logits,
                                       openers)
            close(together[0][i], refusal_logodds(masses)[0])


def test_wrong_positions_would_fail(setup):
    """Shifting the span's position ids by one (as if counted from the padded width) changes the readout far
    beyond the tolerance, so the comparisons above pin the positions."""
    model, tok, span, examples, openers, probe = setup
    batch = build_batch(examples, 6, span, tok.pad_token_id)
    good = readouts(SpanRunner(model, batch), openers, probe)
    batch.inputs.position_ids[:, batch.prefix_width:] += 1
    bad = readouts(SpanRunner(model, batch), openers, probe)
    assert not np.allclose(good[0].numpy(), bad[0].numpy(), rtol=RTOL, atol=1e-3)


def test_missing_rollback_would_fail(setup, monkeypatch):
    """Without the rollback the second run sees the first run's span in the cache and reads differently."""
    model, tok, span, examples, openers, probe = setup
    batch = build_batch(examples, 6, span, tok.pad_token_id)
    first = readouts(SpanRunner(model, batch), openers, probe)
    monkeypatch.setattr(runner_mod, "rollback", lambda cache, to: None)
    r = SpanRunner(model, batch)
    readouts(r, openers, probe)
    with pytest.raises((AssertionError, RuntimeError)):  # the stale span misreads, or no longer fits the masks
        assert_same_readout(readouts(r, openers, probe), first)


# bf16 (how a GPU runs it): measured worst 0.0047 (sites) / 0.018 (whole-opener refusal log-odds, 2026-12-05) with
# sdpa, 0 with eager; span positions off by one in the cached path give 0.09-0.14 / 0.067-0.31
@pytest.mark.parametrize("arch,attn", [("qwen2", "eager"), ("qwen2", "sdpa"), ("llama", "eager"), ("llama", "sdpa"),
                                       ("gemma2", "eager")])
@pytest.mark.parametrize("knockout", [False, True])
@pytest.mark.device
def test_cached_equals_full_bf16(arch, attn, knockout, device):
    model, tok = tiny_model(arch, n_layers=3, seed=2, **ARCHS[arch])
    model = model.to(device=device, dtype=torch.bfloat16)
    model.set_attn_implementation(attn)
    examples, span, openers = toy_examples(tok), derive_safety_spans(tok), opener_tokens(tok)
    probe = ToyProbe(model.config.hidden_size)
    for d in DEPTHS:
        batch = build_batch(examples, d, span, tok.pad_token_id)
        full = readouts(SpanRunner(model, batch, cached=False), openers, probe, knockout=knockout)
        fast = readouts(SpanRunner(model, batch), openers, probe, knockout=knockout)
        assert (fast[0] - full[0]).abs().max().item() < 3e-2
        for site in fast[2]:
            a, b = fast[2][site].float(), full[2][site].float()
            assert ((a - b).norm() / b.norm()).item() < 2e-2, (arch, attn, d, site)
