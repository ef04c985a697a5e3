"""The slot decoder's step equals the model's own forward on the whole sequence, rows leaving and joining."""

from __future__ import annotations

import pytest
import torch

from interp.extract.masks import left_pad
from interp.generate.slots import SlotDecoder, slot_support
from interp.testing import tiny_model

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [3, 4, 5, 6, 7, 8, 9, 10], [12, 13, 14]]


def run_against_forward(model, dtype, steps=6):
    """Max |logit difference| between slot steps and a fresh full forward of each row's sequence, over ``steps``
    steps; row 0 leaves after step 2 (the last row moves into its slot) and prompt 3 joins after step 3."""
    model = model.to(dtype)
    dec = SlotDecoder(model, slots=3, capacity=32)
    ids, m, p = left_pad(PROMPTS[:3], 0)
    logits = dec.prefill(ids, m, p)
    seqs = [list(x) for x in PROMPTS[:3]]
    worst = 0.0
    for step in range(steps):
        toks = logits.argmax(-1)
        for s, t in zip(seqs, toks.tolist()):
            s.append(t)
        if step == 2:  # row 0 leaves: the last row takes its slot
            dec.remove(0)
            seqs = [seqs[2], seqs[1]]
            toks = toks[[2, 1]]
        if step == 3:  # a newcomer joins in the freed slot
            ids, m, p = left_pad([PROMPTS[3]], 0)
            first = dec.prefill(ids, m, p).argmax(-1)
            seqs.append(list(PROMPTS[3]) + [int(first)])
            toks = torch.cat([toks, first])
        logits = dec.step(toks)
        with torch.no_grad():
            for r, s in enumerate(seqs):
                ref = model(input_ids=torch.tensor([s])).logits[0, -1]
                worst = max(worst, (ref.float() - logits[r].float()).abs().max().item())
    return worst


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_slot_steps_equal_the_full_forward_float32(arch):
    model, _ = tiny_model(arch, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_mlp=128)
    assert run_against_forward(model, torch.float32) < 1e-5


def test_slot_steps_track_the_full_forward_bfloat16():
    """bf16 (what CPU generation runs): within bf16 rounding of the model's own bf16 forward."""
    model, _ = tiny_model("qwen2", n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_mlp=128)
    assert run_against_forward(model, torch.bfloat16) < 0.05


def test_slot_limits_and_unsupported_models():
    model, _ = tiny_model("qwen2", n_layers=1)
    dec = SlotDecoder(model, slots=1, capacity=6)
    with pytest.raises(ValueError, match="does not fit the cache"):
        dec.prefill(*left_pad([list(range(1, 8))], 0))
    dec.prefill(*left_pad([[1, 2, 3, 4, 5]], 0))
    with pytest.raises(ValueError, match="exceed 1 slots"):
        dec.prefill(*left_pad([[1]], 0))
    with pytest.raises(ValueError, match="expected 1 tokens"):
        dec.step(torch.tensor([1, 2]))
    dec.step(torch.tensor([1]))
    with pytest.raises(ValueError, match="capacity"):
        dec.step(torch.tensor([1]))
    with pytest.raises(IndexError, match="not in flight"):
        dec.remove(3)
    gemma, _ = tiny_model("gemma2", n_layers=1, sliding_window=8)
    assert "Gemma2ForCausalLM" in slot_support(gemma)
    with pytest.raises(ValueError, match="cannot run this model"):
        SlotDecoder(gemma, slots=1, capacity=4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_greedy_head_equals_the_argmax_of_the_full_logits(dtype, bias):
    """The chunked head picks what the full product's first argmax picks, ties and a ragged last chunk included."""
    from interp.generate.decode import greedy
    from interp.generate.slots import greedy_head

    g = torch.Generator().manual_seed(1)
    head = torch.nn.Linear(6, 1000, bias=bias).to(dtype)
    with torch.no_grad():
        head.weight.copy_(torch.randint(-2, 3, (1000, 6), generator=g).to(dtype))  # integer logits: many ties
        if bias:
            head.bias.copy_(torch.randint(-2, 3, (1000,), generator=g).to(dtype))
        hidden = torch.randint(-2, 3, (40, 6), generator=g).to(dtype)
        full = head(hidden)
    assert ((full == full.max(-1, keepdim=True).values).sum(-1) > 1).sum() > 5  # ties across chunks exist
    for chunk in (64, 300, 1000, 4096):
        assert torch.equal(greedy_head(head, hidden, chunk), greedy(full)), chunk


def test_greedy_step_equals_the_argmax_of_step_float32():
    model, _ = tiny_model("qwen2", n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_mlp=128)
    decs = [SlotDecoder(model, slots=3, capacity=32) for _ in range(2)]
    toks = [d.prefill(*left_pad(PROMPTS[:3], 0)).argmax(-1) for d in decs]
    for _ in range(5):
        logits = decs[0].step(toks[0])
        fast = decs[1].greedy_step(toks[1], chunk=1000)  # several chunks of the tiny model's vocabulary
        assert torch.equal(fast, logits.argmax(-1))
        toks = [logits.argmax(-1), fast]
