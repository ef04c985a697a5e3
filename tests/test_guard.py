"""Exactness of the ADA guard on tiny random float32 models."""

import numpy as np
import pytest
import torch

from interp import UserError
from interp.guard.generator import GuardedGenerator
from interp.guard.types import GuardConfig
from interp.model.hooks import decoder_layers
from interp.model.kvcache import cache_kwarg
from interp.probes.probeset import ProbeSet
from interp.spans.derive import derive_safety_spans, format_prompt_ids
from interp.testing import tiny_model

torch.set_num_threads(1)  # tiny models: threads only add overhead on shared CI cores
PROMPTS = ["How do I bake bread?", "Write a poem about the sea.", "Hi"]


def make_probes(model, spans, hook="resid_post", threshold=0.5, seed=1, scale=0.05):
    n, d = model.config.num_hidden_layers, model.config.hidden_size
    rng = np.random.default_rng(seed)
    name = "ln1.hook_normalized" if hook == "ln1" else f"hook_{hook}"
    return ProbeSet(layers=list(range(n)), weights=rng.normal(size=(n, d)) * scale, bias=np.zeros(n),
                    hook=f"blocks.{{layer}}.{name}", position="probe", best_layer=n // 2,
                    threshold=threshold, provenance={"template_hash": spans.template_hash,
                                                     "span_ids": list(spans.span_ids)})


def setup(arch="qwen2", n_layers=3, **kw):
    model, tok = tiny_model(arch, n_layers=n_layers, sliding_window=16, **kw)
    spans = derive_safety_spans(tok)
    prompts = [format_prompt_ids(tok, p) for p in PROMPTS]
    return model, tok, spans, prompts


def run(model, tok, spans, prompts, probes=None, **cfg):
    gen = GuardedGenerator(model, tok, spans, GuardConfig(**cfg), probes)
    try:
        return gen.generate(prompts)
    finally:
        gen.close()


def scratch_state(model, ids, layer, pre, ln1=False):
    """Layer ``layer`` residual (input if pre else output; the normalised input with ``ln1``) at the last position
    of a fresh forward."""
    store = {}
    mod = decoder_layers(model)[layer]
    if ln1:
        mod = mod.input_layernorm
    def pre_hook(m, a, k):
        store.setdefault("h", a[0] if a else k["hidden_states"])

    def post_hook(m, a, o):
        store.setdefault("h", o[0] if isinstance(o, tuple) else o)

    if pre:
        h = mod.register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:
        h = mod.register_forward_hook(post_hook)
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([ids], device=model.device))
    finally:
        h.remove()
    return store["h"][0, -1]


def spied_lp_run(model, tok, spans, prompt, probes):
    """One guarded generation (ADA-LP every 7 tokens, 22 tokens) and the probe-layer states its checks read."""
    seen = []
    gen = GuardedGenerator(model, tok, spans, GuardConfig(mode="lp", stride=7, max_new_tokens=22), probes)
    orig = gen.checker.lp_hidden

    def spy(cache, mask, pos):
        h = orig(cache, mask, pos)
        seen.append(h.clone())
        return h

    gen.checker.lp_hidden = spy
    try:
        return seen, gen.generate([prompt])[0]
    finally:
        gen.close()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2"])
@pytest.mark.parametrize("hook", ["resid_post", "resid_pre", "ln1"])
def test_check_state_equals_scratch_forward(arch, hook):
    model, tok, spans, prompts = setup(arch)
    probes = make_probes(model, spans, hook=hook, threshold=2.0)  # never fires
    seen, res = spied_lp_run(model, tok, spans, prompts[0], probes)
    depths = [c.depth for c in res.checks]
    assert depths == [7, 14, 21, 22]  # stride + final check
    for h, d in zip(seen, depths):
        ids = res.prompt_ids + res.generated_ids[:d] + list(spans.probe_ids)
        ref = scratch_state(model, ids, probes.best_layer, pre=(hook == "resid_pre"), ln1=hook == "ln1")
        assert ((h[0] - ref).norm() / ref.norm()).item() < 1e-5
    # the scores recorded are the probe on that state
    for h, c in zip(seen, res.checks):
        assert c.score == pytest.approx(float(probes.score(h[0], probes.best_layer)), rel=1e-6)


def _hf_greedy(model, ids, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("arch", ["qwen2", "gemma2"])
def test_rollback_leaves_stream_identical(arch):
    model, tok, spans, prompts = setup(arch)
    probes = make_probes(model, spans, threshold=2.0)
    ref = _hf_greedy(model, prompts[0], 30)
    plain = run(model, tok, spans, [prompts[0]], mode="none", max_new_tokens=30)[0]
    lp = run(model, tok, spans, [prompts[0]], probes, mode="lp", stride=3, early_checks=(1, 2), max_new_tokens=30)[0]
    rk = run(model, tok, spans, [prompts[0]], mode="rk", stride=4, lookahead=6, max_new_tokens=30)[0]
    assert plain.generated_ids[: len(ref)] == ref[: len(plain.generated_ids)]
    assert len(plain.generated_ids) > 5
    assert lp.generated_ids == plain.generated_ids == rk.generated_ids
    assert len(lp.checks) >= 10 and len(rk.checks) >= 7
    assert not lp.halted and not rk.halted
    assert lp.emitted_ids == lp.generated_ids


def test_sampled_stream_unchanged_by_checks():
    model, tok, spans, prompts = setup("llama")
    probes = make_probes(model, spans, threshold=2.0)
    a = run(model, tok, spans, prompts[:2], mode="none", do_sample=True, temperature=1.5, seed=3, max_new_tokens=20)
    b = run(model, tok, spans, prompts[:2], probes, mode="lp", stride=2, do_sample=True, temperature=1.5, seed=3,
            max_new_tokens=20)
    c = run(model, tok, spans, prompts[:2], mode="none", do_sample=True, temperature=1.5, seed=4, max_new_tokens=20)
    assert [r.generated_ids for r in a] == [r.generated_ids for r in b]
    assert [r.generated_ids for r in a] != [r.generated_ids for r in c]


@pytest.mark.parametrize("arch", ["qwen2", "gemma2"])
@pytest.mark.parametrize("hook", ["resid_post", "ln1"])
def test_early_exit_equals_full_forward(arch, hook):
    model, tok, spans, prompts = setup(arch, n_layers=4)
    probes = make_probes(model, spans, hook=hook, threshold=2.0)
    full = run(model, tok, spans, prompts[:2], probes, mode="lp", stride=5, max_new_tokens=24)
    early = run(model, tok, spans, prompts[:2], probes, mode="lp", stride=5, max_new_tokens=24, early_exit=True)
    for f, e in zip(full, early):
        assert f.generated_ids == e.generated_ids
        np.testing.assert_allclose([c.score for c in e.checks], [c.score for c in f.checks], rtol=1e-5)


def test_early_exit_stops_after_probe_layer():
    model, tok, spans, prompts = setup("llama", n_layers=4)
    probes = make_probes(model, spans)
    calls = []
    hooks = [m.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, m in enumerate(decoder_layers(model))]
    gen = GuardedGenerator(model, tok, spans, GuardConfig(mode="lp", early_exit=True), probes)
    try:
        from interp.model.kvcache import new_cache
        cache = new_cache(model)
        ids = torch.tensor([prompts[0]])
        with torch.no_grad():
            model(input_ids=ids, use_cache=True, **{cache_kwarg(model): cache})
            calls.clear()
            gen.checker.lp_hidden(cache, torch.ones_like(ids), torch.tensor([ids.shape[1]]))
    finally:
        gen.close()
        for h in hooks:
            h.remove()
    assert calls == list(range(probes.best_layer + 1))
    assert [layer.get_seq_length() for layer in cache.layers] == [ids.shape[1]] * 4


@pytest.mark.parametrize("arch", ["qwen2", "gemma2"])
@pytest.mark.device
def test_piggyback_equals_separate(arch, device):
    model, tok, spans, prompts = setup(arch)
    model = model.to(device)
    probes = make_probes(model, spans, threshold=2.0)
    kw = dict(stride=4, early_checks=(1,), max_new_tokens=26)
    sep = run(model, tok, spans, prompts, probes, mode="lp", **kw)
    pig = run(model, tok, spans, prompts, probes, mode="lp", piggyback=True, **kw)
    rk_sep = run(model, tok, spans, prompts, mode="rk", matcher="prob", refusal_prob=2.0, **kw)
    rk_pig = run(model, tok, spans, prompts, mode="rk", matcher="prob", refusal_prob=2.0, piggyback=True, **kw)
    for a, b in [*zip(sep, pig), *zip(rk_sep, rk_pig)]:
        assert a.generated_ids == b.generated_ids
        assert [c.depth for c in a.checks] == [c.depth for c in b.checks]
        np.testing.assert_allclose([c.score for c in b.checks], [c.score for c in a.checks], rtol=1e-5, atol=1e-7)


def _threshold_splitting_rows(model, tok, spans, prompts, probes):
    scores = [r.checks[0].score for r in run(model, tok, spans, prompts, probes, mode="lp", stride=6,
                                             max_new_tokens=6)]
    order = sorted(scores)
    return (order[0] + order[1]) / 2  # the lowest-scoring row passes the first check, the others halt


@pytest.mark.parametrize("piggyback", [False, True])
def test_batched_equals_single_with_per_row_halting(piggyback):
    model, tok, spans, prompts = setup("qwen2")
    probes = make_probes(model, spans, scale=0.2)
    thr = _threshold_splitting_rows(model, tok, spans, prompts, probes)
    probes.threshold = thr
    kw = dict(mode="lp", stride=6, max_new_tokens=20, piggyback=piggyback)
    batched = run(model, tok, spans, prompts, probes, **kw)
    assert 0 < sum(r.halted for r in batched) < len(prompts)
    for p, b in zip(prompts, batched):
        s = run(model, tok, spans, [p], probes, **kw)[0]
        assert b.generated_ids == s.generated_ids
        assert (b.halted, b.halt_depth, b.stop_reason, b.emitted_ids) == (s.halted, s.halt_depth, s.stop_reason,
                                                                            s.emitted_ids)
        np.testing.assert_allclose([c.score for c in b.checks], [c.score for c in s.checks], rtol=1e-5)


def test_rk_batched_equals_single():
    model, tok, spans, prompts = setup("llama")
    kw = dict(mode="rk", stride=5, lookahead=5, max_new_tokens=12)
    batched = run(model, tok, spans, prompts, **kw)
    for p, b in zip(prompts, batched):
        s = run(model, tok, spans, [p], **kw)[0]
        assert b.generated_ids == s.generated_ids
        assert [c.lookahead for c in b.checks] == [c.lookahead for c in s.checks]


def test_buffering_releases_only_checked_tokens_and_halt_message():
    model, tok, spans, prompts = setup("qwen2")
    probes = make_probes(model, spans, scale=0.2, threshold=2.0)
    first = run(model, tok, spans, [prompts[0]], probes, mode="lp", stride=5, max_new_tokens=30)[0]
    scores = [c.score for c in first.checks]
    # fire at the first check k >= 1 whose score exceeds all earlier ones
    k = next(i for i in range(1, len(scores)) if scores[i] > max(scores[:i]))
    probes.threshold = (max(scores[:k]) + scores[k]) / 2
    fire = first.checks[k].depth
    for buffer in (True, False):
        log, passed = [], [0]

        def on_event(row, kind, payload, log=log, passed=passed):
            if kind == "check" and not payload.flagged:
                passed[0] = payload.depth
            if kind == "tokens":
                log.append((len(payload), passed[0]))

        gen = GuardedGenerator(model, tok, spans, GuardConfig(mode="lp", stride=5, max_new_tokens=30, buffer=buffer,
                                                              refusal_message="NO."), probes)
        r = gen.generate([prompts[0]], on_event=on_event)[0]
        gen.close()
        released = np.cumsum([n for n, _ in log]) if log else []
        if buffer:
            assert all(total <= p for total, (_, p) in zip(released, log))
            assert r.leak == 0
        assert r.halted and r.halt_depth == fire
        assert r.text.endswith("NO.")
        assert len(r.emitted_ids) == (fire - 5 if buffer else fire)
        assert r.leak == (0 if buffer else 5)


def test_forced_tokens_and_forced_only():
    model, tok, spans, prompts = setup("qwen2")
    forced = tok("Sure, here is how", add_special_tokens=False)["input_ids"]
    gen = GuardedGenerator(model, tok, spans, GuardConfig(mode="rk", stride=2, lookahead=3, max_new_tokens=50))
    r = gen.generate([prompts[0]], forced=[forced], forced_only=True)[0]
    assert r.generated_ids == forced and r.stop_reason == "forced_end"
    assert r.checks[-1].depth == len(forced)


def test_bad_input_refused():
    model, tok, spans, prompts = setup("qwen2", n_layers=2)
    good = make_probes(model, spans)
    with pytest.raises(UserError, match="stride"):
        GuardedGenerator(model, tok, spans, GuardConfig(stride=0), good)
    other = make_probes(model, spans)
    other.provenance["template_hash"] = "0" * 64
    with pytest.raises(UserError, match="template_hash"):
        GuardedGenerator(model, tok, spans, GuardConfig(), other)
    other = make_probes(model, spans)
    other.provenance["model_id"] = "someone/else"
    with pytest.raises(UserError, match="model_id"):
        GuardedGenerator(model, tok, spans, GuardConfig(), other, model_id="tiny")
    other = make_probes(model, spans)
    other.provenance["span_ids"] = [1, 2, 3]
    with pytest.raises(UserError, match="span"):
        GuardedGenerator(model, tok, spans, GuardConfig(), other)
    other = make_probes(model, spans)
    other.hook = "blocks.{layer}.attn.hook_z"
    with pytest.raises(UserError, match="not one the guard reads"):
        GuardedGenerator(model, tok, spans, GuardConfig(), other)
    for position in (0, "span_mean"):  # a probe trained on another span token: the guard reads the probe token
        other = make_probes(model, spans)
        other.position = position
        with pytest.raises(UserError, match=f"probe set reads span position {position!r}, but the guard reads"):
            GuardedGenerator(model, tok, spans, GuardConfig(), other)
    other = make_probes(model, spans)
    other.position = int(spans.probe_index)  # the probe token by its index is the same readout
    GuardedGenerator(model, tok, spans, GuardConfig(), other).close()
    with pytest.raises(UserError, match="outside"):
        GuardedGenerator(model, tok, spans, GuardConfig(probe_layer=5), good)
    gen = GuardedGenerator(model, tok, spans, GuardConfig(), good)
    with pytest.raises(UserError, match="empty prompt"):
        gen.generate([[]])
    gen.close()


def test_context_overflow_stops_cleanly():
    model, tok, spans, prompts = setup("qwen2", n_layers=2)
    probes = make_probes(model, spans, threshold=2.0)
    limit = len(prompts[0]) + 12 + len(spans.span_ids) + 20
    gen = GuardedGenerator(model, tok, spans, GuardConfig(mode="lp", stride=5, max_context=limit,
                                                          max_new_tokens=100), probes)
    r = gen.generate([prompts[0]])[0]
    gen.close()
    assert r.stop_reason == "context_limit"
    assert len(r.prompt_ids) + len(r.generated_ids) + gen.checker.room + 1 > limit
    assert r.emitted_ids == r.generated_ids and r.checks[-1].depth == len(r.generated_ids)
    with pytest.raises(UserError, match="no room"):
        GuardedGenerator(model, tok, spans, GuardConfig(mode="lp", max_context=10), probes).generate([prompts[0]])


# bf16 (how a GPU runs it): measured worst 0.008 with sdpa, 0 with eager; span positions off by one give 0.036-0.13
@pytest.mark.parametrize("arch,attn", [("llama", "eager"), ("llama", "sdpa"), ("qwen2", "eager"), ("qwen2", "sdpa"),
                                       ("gemma2", "eager")])
@pytest.mark.device
def test_check_state_equals_scratch_forward_bf16(arch, attn, device):
    model, tok, spans, prompts = setup(arch)
    model = model.to(device=device, dtype=torch.bfloat16)
    model.set_attn_implementation(attn)
    probes = make_probes(model, spans, threshold=2.0)
    seen, res = spied_lp_run(model, tok, spans, prompts[0], probes)
    assert len(seen) == len(res.checks) >= 3
    for h, c in zip(seen, res.checks):
        ids = res.prompt_ids + res.generated_ids[:c.depth] + list(spans.probe_ids)
        ref = scratch_state(model, ids, probes.best_layer, pre=False).float()
        assert ((h[0].float() - ref).norm() / ref.norm()).item() < 2e-2, (arch, attn, c.depth)
