"""Training text for transcoders: chat-formatted rows ending in the Safety-Token span, mixed datasets."""

from types import SimpleNamespace

from interp.causal.transcoder_run import TranscoderDataConfig, token_rows
from interp.spans.derive import derive_safety_spans
from interp.testing import tiny_model


def test_rows_end_in_the_span_and_comma_separated_datasets_are_mixed(tmp_path):
    _, tok = tiny_model("qwen2", n_layers=1, d_model=32)
    loaded = SimpleNamespace(tokenizer=tok)
    extra = tmp_path / "extra.jsonl"
    extra.write_text('{"prompt": "Name a colour.", "response": "Blue.", "label": "benign"}\n')
    one = token_rows(loaded, TranscoderDataConfig(dataset="demo", limit=4))
    mixed = token_rows(loaded, TranscoderDataConfig(dataset=f"demo, {extra}", limit=4))
    span = list(derive_safety_spans(tok).span_ids)
    assert len(one) == 4 and len(mixed) == 5
    assert mixed[:4] == one
    assert all(r[-len(span):] == span for r in mixed)
    assert tok.decode(mixed[4]).count("Blue.") == 1


def _rows(tok):
    texts = ["a short one", "a much longer row of text that needs padding in a batch", "mid length text here", "x"]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_multi_layer_collection_equals_plain_hooked_forwards_in_row_order():
    import torch

    from interp.causal.transcoders import collect_mlp_io_layers
    from interp.model.hooks import Inputs, mlp_in, mlp_out, run_with_hooks

    model, tok = tiny_model("llama", n_layers=3, d_model=64)
    rows = _rows(tok)
    io = collect_mlp_io_layers(model, rows, [2, 0], batch_size=3)  # length-sorted batches, early stop at 2
    for L in (0, 2):
        want_x, want_y = [], []
        for r in rows:  # one row at a time, full forward, no padding
            _, cache = run_with_hooks(model, Inputs(torch.tensor([r])), capture=(mlp_in(L), mlp_out(L)))
            want_x.append(cache[mlp_in(L)][0])
            want_y.append(cache[mlp_out(L)][0])
        torch.testing.assert_close(io[L][0], torch.cat(want_x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(io[L][1], torch.cat(want_y), rtol=1e-5, atol=1e-5)
    capped = collect_mlp_io_layers(model, rows, [1], max_tokens=len(rows[0]) + 3)
    assert len(capped[1][0]) == len(rows[0]) + 3


def test_joint_evaluation_equals_one_layer_at_a_time():
    import pytest

    from interp.causal.transcoders import evaluate_transcoder, evaluate_transcoders, new_transcoder

    model, tok = tiny_model("qwen2", n_layers=2, d_model=64)
    rows = _rows(tok) * 2
    tcs = {}
    for L in (0, 1):
        import torch

        torch.manual_seed(L)
        tc = new_transcoder(64, 128, 64)
        for p in tc.parameters():
            p.data.normal_(0, 0.05)
        tcs[L] = tc
    joint = evaluate_transcoders(model, tcs, rows, batch_size=3)
    for L, tc in tcs.items():
        alone = evaluate_transcoder(model, tc, L, rows, batch_size=3)
        assert joint[L].keys() == alone.keys()
        for key, value in alone.items():
            assert joint[L][key] == (None if value is None else pytest.approx(value, rel=1e-6, abs=1e-9)), key
    assert joint[0]["loss_spliced"] != joint[1]["loss_spliced"]
    # the activations read during the clean forwards are the ones the collection pass gives
    from interp.causal.transcoders import collect_mlp_io_layers, fvu

    io = collect_mlp_io_layers(model, rows, [0, 1])
    for L, tc in tcs.items():
        x, y = io[L]
        assert joint[L]["n_tokens"] == len(x)
        with torch.no_grad():
            assert joint[L]["fvu"] == pytest.approx(fvu(y, tc.decode(tc.encode(x))), rel=1e-5)


def test_loss_recovered_is_undefined_when_zero_ablation_does_not_matter():
    from interp.causal.transcoders import loss_recovered

    assert loss_recovered(2.0, 2.5, 3.0) == 0.5
    assert loss_recovered(2.0, 2.0, 3.0) == 1.0
    assert loss_recovered(2.648, 2.67, 2.6480001) is None
    assert loss_recovered(2.0, 2.1, 1.9) is None
