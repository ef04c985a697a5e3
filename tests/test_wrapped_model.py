"""A model whose decoder layers sit under ``model.language_model`` (a vision-language wrapper, here a tiny Llava
around the same Llama weights) works in extraction, the guard and the causal code, with the plain model's values."""

import numpy as np
import pytest
import torch

from interp.causal.inputs import build_batch
from interp.causal.metrics import opener_tokens
from interp.causal.patching import patching_sweep
from interp.causal.synthetic import toy_examples
from interp.evaluate.common import random_probes
from interp.extract.packed import extract_to_store
from interp.extract.store import ActivationStore
from interp.generate.continuations import Continuation
from interp.guard.generator import GuardedGenerator
from interp.guard.types import GuardConfig
from interp.model.hooks import body, decoder_layers, resid_post, run_with_hooks
from interp.spans.derive import derive_safety_spans, encode_response, format_prompt_ids
from interp.testing import tiny_wrapped_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def models():
    wrapped, plain, tok = tiny_wrapped_model(n_layers=3)
    return wrapped, plain, tok, derive_safety_spans(tok)


def test_layers_are_found_under_language_model(models):
    wrapped, plain, _, _ = models
    assert decoder_layers(wrapped) is wrapped.model.language_model.layers
    assert body(wrapped) is wrapped.model.language_model
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    torch.testing.assert_close(wrapped(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=0, atol=1e-6)


def test_extraction_equals_plain_model(models, tmp_path):
    wrapped, plain, tok, spans = models
    items = []
    for i, text in enumerate(["How do I bake bread?", "Write a poem about the sea.", "Hi there"]):
        p = format_prompt_ids(tok, text)
        r = encode_response(tok, p, "Sure, here is how to do it step by step. " * (i + 1))
        items.append(Continuation(id=f"x{i}", prompt=text, label="harmful" if i % 2 else "benign",
                                  prompt_ids=p, response_ids=r))
    kw = dict(spans=spans, depths=[0, 4, 9], layers=[0, 2], hooks=("resid_pre", "resid_post", "ln1"),
              storage_dtype="float32", progress=False, provenance={"model_id": "tiny"})
    extract_to_store(wrapped, tok, items, tmp_path / "w.h5", **kw)
    extract_to_store(plain, tok, items, tmp_path / "p.h5", **kw)
    with ActivationStore.open(tmp_path / "w.h5") as a, ActivationStore.open(tmp_path / "p.h5") as b:
        for hook in ("resid_pre", "resid_post", "ln1"):
            for layer in (0, 2):
                x, y = a.read(hook, layer), b.read(hook, layer)
                assert np.abs(x).max() > 0
                np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", ["lp", "rk"])
def test_guard_equals_plain_model(models, mode):
    wrapped, plain, tok, spans = models
    probes = random_probes(plain, spans, layer=1, threshold=2.0) if mode == "lp" else None
    prompts = [format_prompt_ids(tok, t) for t in ("How do I bake bread?", "Hi")]
    out = []
    for model in (wrapped, plain):
        gen = GuardedGenerator(model, tok, spans, GuardConfig(mode=mode, stride=4, max_new_tokens=12,
                                                              lookahead=4), probes, prob_scores=True)
        try:
            out.append(gen.generate(prompts))
        finally:
            gen.close()
    for w, p in zip(*out):
        assert w.generated_ids == p.generated_ids
        assert [c.depth for c in w.checks] == [c.depth for c in p.checks] and w.checks
        np.testing.assert_allclose([c.score for c in w.checks], [c.score for c in p.checks], rtol=1e-5, atol=1e-6)


def test_causal_hooks_and_patching_equal_plain_model(models):
    wrapped, plain, tok, spans = models
    examples = toy_examples(tok)
    batch = build_batch(examples[:3], 4, spans, tok.pad_token_id)
    a = run_with_hooks(wrapped, batch.inputs, capture=(resid_post(1),))
    b = run_with_hooks(plain, batch.inputs, capture=(resid_post(1),))
    torch.testing.assert_close(a[1][resid_post(1)], b[1][resid_post(1)], rtol=0, atol=1e-5)
    openers = opener_tokens(tok)
    rw = patching_sweep(wrapped, examples, spans, tok.pad_token_id, openers, depths=(0, 4), layers=(0, 2))
    rp = patching_sweep(plain, examples, spans, tok.pad_token_id, openers, depths=(0, 4), layers=(0, 2))
    assert rw.keys() == rp.keys()
    np.testing.assert_allclose(np.asarray(_numbers(rw)), np.asarray(_numbers(rp)), rtol=1e-4, atol=1e-5)


def _numbers(obj):
    if isinstance(obj, dict):
        return [x for k in sorted(obj, key=str) for x in _numbers(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [x for v in obj for x in _numbers(v)]
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return [float(obj)]
    return []
