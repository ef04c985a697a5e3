"""Training text for transcoders: chat-formatted rows ending in the Safety-Token span, mixed datasets."""

from types import SimpleNamespace

from interp.commands.transcoders import TranscoderDataConfig, token_rows
from interp.templates import derive_safety_spans
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
