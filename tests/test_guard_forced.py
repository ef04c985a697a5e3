"""Forced (teacher-forced) tokens fed in chunks equal the one-token-per-step reference path (float32, tiny)."""

import numpy as np
import pytest
import torch

from interp.guard.generator import GuardedGenerator
from interp.guard.types import GuardConfig
from interp.model.hooks import decoder_layers
from interp.probes.probeset import ProbeSet
from interp.spans.derive import derive_safety_spans, format_prompt_ids
from interp.testing import hf_greedy_text, tiny_model

torch.set_num_threads(1)
PROMPTS = ["How do I bake bread?", "Write a poem about the sea.", "Hi"]
TEXT = ("Sure, here is how to bake bread step by step. The quick brown fox jumps over the lazy dog. "
        "def main():\n    print('hello')\n\nimport os\nHello world! 0123456789 Explain how vaccines work. ")


def make_probes(model, spans, threshold=0.5, seed=1, scale=0.05):
    n, d = model.config.num_hidden_layers, model.config.hidden_size
    rng = np.random.default_rng(seed)
    return ProbeSet(layers=list(range(n)), weights=rng.normal(size=(n, d)) * scale, bias=np.zeros(n),
                    hook="blocks.{layer}.hook_resid_post", position="probe", best_layer=n // 2,
                    threshold=threshold, provenance={"template_hash": spans.template_hash,
                                                     "span_ids": list(spans.span_ids)})


def setup(arch, **kw):
    model, tok = tiny_model(arch, n_layers=3, **kw)  # gemma2: sliding window 32
    spans = derive_safety_spans(tok)
    prompts = [format_prompt_ids(tok, p) for p in PROMPTS]
    text_ids = tok(TEXT * 3, add_special_tokens=False)["input_ids"]
    return model, tok, spans, prompts, text_ids


def generate(model, tok, spans, prompts, forced, probes=None, *, chunk=True, forced_only=True,
             detectors=("base", "rk", "lp"), halt=False, **cfg):
    cfg = {"mode": "rk", "lookahead": 4, "max_new_tokens": 200, "buffer": False, **cfg}
    gen = GuardedGenerator(model, tok, spans, GuardConfig(**cfg), probes, detectors=detectors, halt=halt,
                           base_lookahead=5, chunk_forced=chunk)
    try:
        return gen.generate(prompts, forced=forced, forced_only=forced_only)
    finally:
        gen.close()


def assert_same(a, b):
    assert a.generated_ids == b.generated_ids
    assert a.emitted_ids == b.emitted_ids
    assert (a.stop_reason, a.halted, a.halt_depth) == (b.stop_reason, b.halted, b.halt_depth)
    key = [(c.depth, c.detector, c.flagged, c.lookahead) for c in a.checks]
    assert key == [(c.depth, c.detector, c.flagged, c.lookahead) for c in b.checks]
    sa = [c.score for c in a.checks if c.score is not None]
    sb = [c.score for c in b.checks if c.score is not None]
    assert len(sa) == len(sb)
    np.testing.assert_allclose(sa, sb, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2"])
@pytest.mark.parametrize("forced_only", [True, False])
def test_chunked_equals_stepwise_batched_and_single(arch, forced_only):
    model, tok, spans, prompts, text = setup(arch, sliding_window=16)
    probes = make_probes(model, spans)
    # different forced lengths per row; the last row ends its run with an EOS token mid-stream
    forced = [text[:70], text[5:28], text[9:40] + [tok.eos_token_id] + text[:10]]
    # chunks of up to 30 tokens pass gemma2's sliding window (16 here) on its sliding cache
    kw = dict(stride=40, early_checks=(1, 2, 5, 9, 23), check_at_start=True, max_new_tokens=75 if forced_only else 78)
    chunked = generate(model, tok, spans, prompts, forced, probes, forced_only=forced_only, **kw)
    stepped = generate(model, tok, spans, prompts, forced, probes, chunk=False, forced_only=forced_only, **kw)
    for a, b in zip(chunked, stepped):
        assert_same(a, b)
    assert (chunked[2].stop_reason, len(chunked[2].generated_ids)) == ("eos", 31)
    if forced_only:
        assert [r.stop_reason for r in chunked[:2]] == ["forced_end"] * 2
        assert chunked[0].checks[-1].depth == 70
    else:  # free tokens follow the forced ones
        assert len(chunked[0].generated_ids) > 70 and chunked[0].generated_ids[:70] == forced[0]
    assert len(chunked[0].checks) >= 3 * 7
    # batched == one at a time (a final check for one row checks the whole batch, so none here)
    kw["final_check"] = False
    batched = generate(model, tok, spans, prompts, forced, probes, forced_only=forced_only, **kw)
    for p, f, b in zip(prompts, forced, batched):
        assert_same(generate(model, tok, spans, [p], [f], probes, forced_only=forced_only, **kw)[0], b)


def test_gemma2_long_chunk_past_window_equals_scratch():
    """One chunk of 61 tokens (about twice the sliding window, 32) over a sliding cache: checks equal re-encoding."""
    model, tok, spans, prompts, text = setup("gemma2")
    forced = text[:64]
    res = generate(model, tok, spans, [prompts[0]], [forced], detectors=("base", "rk"), stride=64,
                   early_checks=(3,), max_new_tokens=64)[0]
    assert [(c.depth, c.detector) for c in res.checks] == [(3, "base"), (3, "rk"), (64, "base"), (64, "rk")]
    for c in res.checks:
        ids = prompts[0] + forced[: c.depth] + (list(spans.span_ids) if c.detector == "rk" else [])
        assert c.lookahead == hf_greedy_text(model, tok, ids, 4 if c.detector == "rk" else 5)


@pytest.mark.parametrize("mode", ["lp", "rk"])
def test_piggyback_falls_back_to_separate_check_in_chunks(mode, monkeypatch):
    """Checks at chunk boundaries run as separate forwards; free tokens after the run still piggyback."""
    model, tok, spans, prompts, text = setup("qwen2")
    probes = make_probes(model, spans, threshold=2.0)
    forced = [text[:20], text[3:14]]
    kw = dict(mode=mode, matcher="prob", refusal_prob=2.0, stride=4, early_checks=(1,), max_new_tokens=30,
              buffer=True)
    det = (mode,)
    from interp.guard.checks import Checker

    calls = {"piggyback": 0, "run": 0}
    for name in calls:
        orig = getattr(Checker, name)

        def spy(self, *a, _orig=orig, _name=name, **k):
            calls[_name] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(Checker, name, spy)
    pig = generate(model, tok, spans, prompts[:2], forced, probes, forced_only=False, detectors=det,
                   piggyback=True, **kw)
    assert calls["run"] >= 2 and calls["piggyback"] >= 2  # chunk boundaries: run; free decoding: piggyback
    sep = generate(model, tok, spans, prompts[:2], forced, probes, forced_only=False, detectors=det,
                   chunk=False, **kw)
    pig_ref = generate(model, tok, spans, prompts[:2], forced, probes, forced_only=False, detectors=det,
                       chunk=False, piggyback=True, **kw)
    for a, b, c in zip(pig, sep, pig_ref):
        assert_same(a, b)
        assert_same(a, c)
        assert len(a.generated_ids) == 30


def test_early_exit_with_chunks_equals_stepwise():
    model, tok, spans, prompts, text = setup("llama")
    probes = make_probes(model, spans, threshold=2.0)
    forced = [text[:33], text[2:17]]
    kw = dict(mode="lp", stride=6, early_exit=True, max_new_tokens=40)
    a = generate(model, tok, spans, prompts[:2], forced, probes, detectors=("lp",), **kw)
    b = generate(model, tok, spans, prompts[:2], forced, probes, detectors=("lp",), chunk=False, **kw)
    for x, y in zip(a, b):
        assert_same(x, y)


def test_halting_and_buffering_with_chunks():
    """A row halted at a chunk-boundary check stops; the others go on in chunks; buffers release alike."""
    model, tok, spans, prompts, text = setup("qwen2")
    probes = make_probes(model, spans, scale=0.2)
    forced = [text[:40], text[4:36], text[8:44]]
    kw = dict(mode="lp", stride=8, max_new_tokens=50, buffer=True)
    probe_run = generate(model, tok, spans, prompts, forced, probes, detectors=("lp",), **kw)
    first = sorted(r.checks[0].score for r in probe_run)
    probes.threshold = (first[0] + first[1]) / 2  # one row passes the first check, the others halt
    logs = {True: [], False: []}
    out = {}
    for chunk in (True, False):
        gen = GuardedGenerator(model, tok, spans, GuardConfig(**kw), probes, chunk_forced=chunk)
        out[chunk] = gen.generate(prompts, forced=forced, forced_only=True,
                                  on_event=lambda b, kind, p, log=logs[chunk]: log.append((b, kind, p)))
        gen.close()
    assert 0 < sum(r.halted for r in out[True]) < 3
    for a, b in zip(out[True], out[False]):
        assert_same(a, b)
    # the same event stream (buffered releases happen at checks either way; scores agree to float error)
    def collapse(log):
        return [(b, k, (p.depth, p.detector, p.flagged) if k == "check" else p) for b, k, p in log]
    assert collapse(logs[True]) == collapse(logs[False])


def test_sampled_continuation_after_forced_run_equals_stepwise():
    model, tok, spans, prompts, text = setup("llama")
    forced = [text[:12], text[3:20]]
    kw = dict(mode="none", do_sample=True, temperature=1.5, seed=5, max_new_tokens=30)
    a = generate(model, tok, spans, prompts[:2], forced, detectors=(), forced_only=False, **kw)
    b = generate(model, tok, spans, prompts[:2], forced, detectors=(), forced_only=False, chunk=False, **kw)
    assert [r.generated_ids for r in a] == [r.generated_ids for r in b]
    assert a[0].generated_ids[:12] == forced[0] and len(a[0].generated_ids) == 30


def count_forwards(model, fn) -> int:
    """Forwards through the model's first decoder layer (decode steps, chunks and check forwards alike)."""
    n = [0]
    handle = decoder_layers(model)[0].register_forward_hook(lambda *a: n.__setitem__(0, n[0] + 1))
    try:
        fn()
    finally:
        handle.remove()
    return n[0]


@pytest.mark.parametrize("F,s", [(48, 8), (60, 20)])
def test_forced_run_costs_about_one_forward_per_check(F, s):
    model, tok, spans, prompts, text = setup("qwen2")
    probes = make_probes(model, spans, threshold=2.0)
    kw = dict(mode="lp", stride=s, max_new_tokens=F, early_exit=True)
    fast = count_forwards(model, lambda: generate(model, tok, spans, [prompts[0]], [text[:F]], probes,
                                                  detectors=("lp",), **kw))
    slow = count_forwards(model, lambda: generate(model, tok, spans, [prompts[0]], [text[:F]], probes,
                                                  detectors=("lp",), chunk=False, **kw))
    checks = F // s
    # prompt + one chunk per stride + one span forward per check
    assert fast == 1 + checks + checks
    assert slow >= F + checks


@pytest.mark.parametrize("limit", ["context", "max_new_tokens"])
def test_limits_inside_a_forced_run(limit):
    model, tok, spans, prompts, text = setup("qwen2")
    probes = make_probes(model, spans, threshold=2.0)
    forced = [text[:40], text[1:45]]
    room = len(spans.span_ids) + 6  # span + max(lookahead, base_lookahead)
    kw = dict(stride=10, lookahead=6, max_new_tokens=27) if limit == "max_new_tokens" else dict(
        stride=10, lookahead=6, max_context=max(map(len, prompts[:2])) + 23 + room)
    a = generate(model, tok, spans, prompts[:2], forced, probes, forced_only=False, **kw)
    b = generate(model, tok, spans, prompts[:2], forced, probes, forced_only=False, chunk=False, **kw)
    for x, y in zip(a, b):
        assert_same(x, y)
        assert x.stop_reason == ("max_new_tokens" if limit == "max_new_tokens" else "context_limit")
        assert x.checks[-1].depth == len(x.generated_ids) == (27 if limit == "max_new_tokens" else 23)


@pytest.mark.parametrize("chunk", [False, True])
def test_forced_rows_skip_the_lm_head_and_change_nothing(chunk):
    """A row whose next token is forced (and is not checked there) does not go through the LM head; the streams,
    checks and scores equal the run that computes every row's logits."""
    model, tok, spans, prompts, text = setup("qwen2")
    probes = make_probes(model, spans)
    forced = [text[:30], text[5:12], text[9:20] + [tok.eos_token_id]]
    seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    runs = {}
    try:
        for skip in (True, False):
            seen.clear()
            runs[skip] = (generate(model, tok, spans, prompts, forced, probes, chunk=chunk, forced_only=False,
                                   stride=10, early_checks=(3,), max_new_tokens=40, skip_forced_head=skip),
                          sum(seen))
    finally:
        hook.remove()
    for a, b in zip(runs[True][0], runs[False][0]):
        assert_same(a, b)
    assert runs[True][1] < runs[False][1]  # head rows: forced, unchecked steps skipped it
