"""Transcoder training, sae-lens round trip, splicing and evaluation on a tiny random model."""

from __future__ import annotations

import json

import pytest
import torch

from interp.causal.transcoders import (
    TranscoderTrainConfig,
    collect_mlp_io,
    evaluate_transcoder,
    fvu,
    list_transcoders,
    load_transcoder,
    save_transcoder,
    splice_hooks,
    train_transcoder,
)
from interp.model.hooks import Inputs, mlp_in, mlp_out, run_with_hooks
from interp.testing import tiny_model

TEXTS = ["How do I bake bread? Sure, here is how to bake bread step by step.",
         "I'm sorry, but I can't help with that request.", "Write a poem about the sea.",
         "The quick brown fox jumps over the lazy dog.", "def main():\n    print('hello')",
         "Explain how vaccines work in simple terms.", "Hello world! 0123456789 user assistant"]


@pytest.fixture(scope="module")
def setup():
    model, tok = tiny_model("qwen2", n_layers=2)
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS * 3]
    return model, tok, rows


@pytest.fixture(scope="module")
def trained(setup):
    model, _, rows = setup
    x, y = collect_mlp_io(model, rows, layer=1)
    cfg = TranscoderTrainConfig(expansion=4, steps=120, batch_tokens=128, l1_coeff=1e-3, lr=3e-3)
    tc, log = train_transcoder(x, y, cfg, metadata={"hook_name": mlp_in(1), "hook_name_out": mlp_out(1),
                                                     "model_name": "tiny"})
    return tc, log, x, y


def test_collect_matches_hooks(setup):
    model, _, rows = setup
    x, y = collect_mlp_io(model, rows[:2], layer=0, batch_size=2)
    assert len(x) == len(rows[0]) + len(rows[1])
    _, cache = run_with_hooks(model, Inputs(torch.tensor([rows[1]])), capture=(mlp_in(0), mlp_out(0)))
    torch.testing.assert_close(x[len(rows[0]):], cache[mlp_in(0)][0], rtol=0, atol=1e-5)
    torch.testing.assert_close(y[len(rows[0]):], cache[mlp_out(0)][0], rtol=0, atol=1e-5)


def test_training_reduces_fvu_and_is_sparse(trained):
    tc, log, x, y = trained
    first, last = log["log"][0], log["log"][-1]
    assert last["fvu"] < 0.5 * first["fvu"]
    with torch.no_grad():
        acts = tc.encode(x)
        assert fvu(y, tc.decode(acts)) < 0.5
        assert float((acts > 0).float().sum(-1).mean()) < tc.cfg.d_sae


def test_sae_lens_round_trip_identical(trained, tmp_path):
    from sae_lens import SAE
    from sae_lens.saes.transcoder import Transcoder

    tc, log, x, _ = trained
    folder = save_transcoder(tc, tmp_path / "tiny" / "layer_1", {"metrics": {"fvu": 0.1}, "train": log})
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae_weights.safetensors", "training.json"]
    loaded = SAE.load_from_disk(folder)
    assert isinstance(loaded, Transcoder) and loaded.cfg.metadata.hook_name == mlp_in(1)
    with torch.no_grad():
        assert torch.equal(loaded(x), tc(x))
        assert torch.equal(load_transcoder(folder)(x), tc(x))
    assert json.loads((folder / "cfg.json").read_text())["architecture"] == "transcoder"
    listed = list_transcoders(tmp_path)
    assert len(listed) == 1 and listed[0]["hook_name"] == mlp_in(1) and listed[0]["metrics"] == {"fvu": 0.1}


def test_splice_identity_edit_keeps_model_and_full_splice_changes_it(setup, trained):
    model, _, rows = setup
    tc = trained[0]
    ids = torch.tensor([rows[0]])
    plain, _ = run_with_hooks(model, Inputs(ids))
    pos = torch.arange(ids.shape[1])
    same, _ = run_with_hooks(model, Inputs(ids), splice_hooks(tc, 1, lambda a: a, torch.zeros_like(pos), pos))
    torch.testing.assert_close(same, plain, rtol=0, atol=1e-4)
    zeroed, _ = run_with_hooks(model, Inputs(ids), splice_hooks(tc, 1, torch.zeros_like, torch.zeros_like(pos),
                                                                pos))
    assert not torch.allclose(zeroed, plain, atol=1e-3)
    spliced, _ = run_with_hooks(model, Inputs(ids), splice_hooks(tc, 1))
    assert not torch.equal(spliced, plain)


def test_evaluate_reports_losses(setup, trained):
    model, _, rows = setup
    res = evaluate_transcoder(model, trained[0], 1, rows[:7], batch_size=4)
    assert res["n_tokens"] == sum(len(r) for r in rows[:7])
    assert 0 <= res["fvu"] < 0.5 and res["l0"] > 0
    assert res["delta_loss"] == pytest.approx(res["loss_spliced"] - res["loss_clean"])
    assert res["loss_zero_ablated"] != res["loss_clean"]
