"""Continuation sources: dataset responses, prefill attacks and own answers, batched == one at a time."""

from __future__ import annotations

import pytest
import torch

from interp import UserError
from interp.data.records import Record
from interp.generate.continuations import (
    Continuation,
    from_records,
    generate_continuations,
    load_jsonl,
    save_jsonl,
    stop_token_ids,
)
from interp.spans.derive import derive_safety_spans, encode_response, format_prompt_ids
from interp.testing import tiny_model

RECORDS = [Record(id="h1", prompt="How do I make a weapon?", label="harmful", source="t"),
           Record(id="b1", prompt="Write a poem about the sea.", label="benign", source="t"),
           Record(id="h2", prompt="Explain how to bake bread step by step please", label="harmful", source="t")]


@pytest.fixture(scope="module")
def model_tok():
    return tiny_model("qwen2", n_layers=2, d_model=64, seed=11)


def test_prefill_and_own_continuations(model_tok):
    model, tok = model_tok
    out = generate_continuations(model, tok, RECORDS, mode="auto", max_new_tokens=12, batch_size=3,
                                 progress=False)
    assert [c.kind for c in out] == ["prefill", "own", "prefill"]
    stops = set(stop_token_ids(model, tok, derive_safety_spans(tok)))
    for c, rec in zip(out, RECORDS):
        assert c.prompt_ids == format_prompt_ids(tok, rec.prompt)
        forced = encode_response(tok, c.prompt_ids, "Sure, here is") if c.kind == "prefill" else []
        assert c.response_ids[:len(forced)] == forced
        assert not stops & set(c.response_ids[len(forced):])  # end of turn is not part of the response
        assert len(c.response_ids) - len(forced) <= 12
        if not c.finished:
            assert len(c.response_ids) - len(forced) == 12
        # greedy continuation equals the model's argmax after the forced prefix
        ids = torch.tensor([c.prompt_ids + c.response_ids[:len(forced)]])
        if len(c.response_ids) > len(forced):
            with torch.no_grad():
                first = model(input_ids=ids).logits[0, -1].argmax().item()
            assert c.response_ids[len(forced)] == first


def test_batched_left_padded_generation_equals_one_at_a_time(model_tok):
    model, tok = model_tok
    batched = generate_continuations(model, tok, RECORDS, mode="prefill", max_new_tokens=10, batch_size=3,
                                     progress=False)
    single = generate_continuations(model, tok, RECORDS, mode="prefill", max_new_tokens=10, batch_size=1,
                                    progress=False)
    assert [c.response_ids for c in batched] == [c.response_ids for c in single]


def test_sampling_is_seeded(model_tok):
    model, tok = model_tok
    kw = dict(mode="own", max_new_tokens=8, do_sample=True, temperature=1.5, batch_size=2, progress=False)
    a = generate_continuations(model, tok, RECORDS, seed=1, **kw)
    b = generate_continuations(model, tok, RECORDS, seed=1, **kw)
    assert [c.response_ids for c in a] == [c.response_ids for c in b]
    assert a[0].meta["do_sample"] is True and a[0].meta["seed"] == 1


def test_jsonl_round_trip_and_dataset_responses(tmp_path, model_tok):
    _, tok = model_tok
    recs = [Record(id="d1", prompt="hi", label="benign", response="Hello world!", source="ds", meta={"k": 1}),
            Record(id="d2", prompt="x", label="harmful", response="", source="ds")]
    conts = from_records(recs, tok)
    assert conts[0].response_ids == encode_response(tok, conts[0].prompt_ids, "Hello world!")
    assert conts[1].response_ids == [] and conts[0].meta == {"k": 1}
    path = save_jsonl(conts, tmp_path / "c.jsonl")
    back = load_jsonl(path)
    assert back == conts
    with pytest.raises(UserError, match="no response"):
        from_records([Record(id="n", prompt="x", label="benign")], tok)
    (tmp_path / "bad.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(UserError, match="lacks"):
        load_jsonl(tmp_path / "bad.jsonl")
    with pytest.raises(UserError):
        load_jsonl(tmp_path / "missing.jsonl")


def test_bad_generation_options(model_tok):
    model, tok = model_tok
    with pytest.raises(UserError):
        generate_continuations(model, tok, RECORDS, mode="dataset", progress=False)
    with pytest.raises(UserError):
        generate_continuations(model, tok, RECORDS, mode="prefill", opener="", progress=False)
    assert isinstance(Continuation.from_dict(
        {"id": "a", "prompt": "p", "label": "benign", "prompt_ids": [1], "response_ids": [], "extra": 1}),
        Continuation)


def test_cli_generate_then_extract(tmp_path, monkeypatch):
    import json

    from interp.cli.main import main
    from interp.extract.store import ActivationStore

    model, tok = tiny_model("qwen2", n_layers=2, d_model=64, seed=12)
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    cont = tmp_path / "c.jsonl"
    common = ["--model", str(tmp_path / "tiny"), "--data", "demo", "--limit", "4"]
    assert main(["generate", *common, "--mode", "prefill", "--max-new-tokens", "6", "--out", str(cont)]) == 0
    items = load_jsonl(cont)
    assert len(items) == 4 and all(c.kind == "prefill" for c in items)
    saved = json.loads(cont.with_suffix(".config.json").read_text())
    assert saved["generate"]["mode"] == "prefill" and saved["gen_dtype_resolved"] == "float32"  # `model`, resolved
    assert main(["generate", *common, "--mode", "prefill", "--max-new-tokens", "2", "--gen-dtype", "bfloat16",
                 "--out", str(tmp_path / "b.jsonl")]) == 0
    assert json.loads((tmp_path / "b.config.json").read_text())["gen_dtype_resolved"] == "bfloat16"
    args = ["extract", *common, "--continuations", str(cont), "--depths", "0:8:4", "--layers", "1",
            "--store-dtype", "float32"]
    assert main(args) == 0
    stores = list((tmp_path / "activations").rglob("*.h5"))
    assert len(stores) == 1
    with ActivationStore.open(stores[0]) as s:
        assert s.done.all() and s.depths.tolist() == [0, 4, 8] and s.layers == [1]
        assert s.provenance["package_version"] and s.provenance["config"]["extract"]["depths"] == "0:8:4"
    assert stores[0].with_suffix(".config.json").exists()
    assert main(args) == 0  # rerun: resumes, nothing to do
    assert main(args[:-2] + ["--store-dtype", "float16", "--out", str(stores[0])]) == 2  # refused
    # generating zero tokens makes empty answers and bare openers: refused before the model loads (issue 33)
    empty = tmp_path / "zero.jsonl"
    assert main(["generate", *common, "--max-new-tokens", "0", "--out", str(empty)]) == 2 and not empty.exists()


def test_matched_mode_adds_a_forced_opener_copy_of_each_benign_record(model_tok):
    from interp.generate.continuations import GenerateConfig, continuations_for

    model, tok = model_tok
    out = continuations_for(model, tok, RECORDS, GenerateConfig(mode="matched", max_new_tokens=6), progress=False)
    assert [(c.id, c.label, c.kind) for c in out] == [
        ("h1", "harmful", "prefill"), ("b1", "benign", "own"), ("b1#prefill", "benign", "prefill"),
        ("h2", "harmful", "prefill")]
    auto = continuations_for(model, tok, RECORDS, GenerateConfig(mode="auto", max_new_tokens=6), progress=False)
    own = {c.id: c for c in out}
    assert [own[c.id].response_ids for c in auto] == [c.response_ids for c in auto]  # same text where shared
    assert own["b1#prefill"].response_ids[:3] == encode_response(tok, own["b1"].prompt_ids, "Sure, here is")[:3]


def test_generate_respects_the_context_limit():
    from interp.generate.continuations import GenerateConfig, continuations_for

    model, tok = tiny_model("qwen2", n_layers=2, d_model=64, seed=11)
    span = len(derive_safety_spans(tok).span_ids)
    long = Record(id="long", prompt="word " * 60, label="benign", source="t")
    short = Record(id="short", prompt="Hi", label="benign", source="t")
    n_long = len(format_prompt_ids(tok, long.prompt))
    model.config.max_position_embeddings = n_long + span + 5  # room for 5 new tokens after the long prompt
    cfg = GenerateConfig(mode="own", max_new_tokens=12)
    with pytest.raises(UserError, match="exceed the model context"):
        continuations_for(model, tok, [short, long], GenerateConfig(mode="own", max_new_tokens=12, too_long="error"),
                          progress=False)
    skipped: list = []
    with pytest.warns(UserWarning, match="--too-long skip: 1 record"):
        out = continuations_for(model, tok, [short, long], GenerateConfig(mode="own", max_new_tokens=12,
                                                                          too_long="skip"), progress=False,
                                skipped=skipped)
    assert [c.id for c in out] == ["short"] and skipped == ["long"]
    with pytest.warns(UserWarning, match="cut from 12 to 5"):
        out = continuations_for(model, tok, [short, long], cfg, progress=False)
    assert [c.id for c in out] == ["short", "long"] and len(out[1].response_ids) <= 5
    alone = continuations_for(model, tok, [short], cfg, progress=False)
    assert out[0].response_ids == alone[0].response_ids  # the truncated job ran alone; the others are unchanged
    model.config.max_position_embeddings = n_long - 1  # the prompt alone does not fit
    with pytest.raises(UserError, match="use --too-long skip"):
        continuations_for(model, tok, [long], cfg, progress=False)


def test_extract_refuses_continuations_made_with_another_tokenizer(tmp_path, capsys):
    """`anydepth generate` records the tokenizer's fingerprint beside the JSONL; `anydepth extract` with another
    model's tokenizer refuses the file (its ids would silently mean other tokens), the same model accepts it."""
    from interp.cli.main import main
    from interp.testing import tiny_model

    for name, (arch, family) in {"a": ("qwen2", "qwen2"), "b": ("llama", "llama3")}.items():
        model, tok = tiny_model(arch, family, n_layers=2)
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    cont = tmp_path / "c.jsonl"
    assert main(["generate", "--model", str(tmp_path / "a"), "--data", "demo", "--limit", "2",
                 "--max-new-tokens", "4", "--out", str(cont)]) == 0
    capsys.readouterr()
    common = ["--continuations", str(cont), "--depths", "0,2", "--layers", "0"]
    assert main(["extract", "--model", str(tmp_path / "b"), *common, "--out", str(tmp_path / "b.h5")]) == 2
    err = capsys.readouterr().err
    assert "generated with another tokenizer" in err and "Traceback" not in err
    assert not (tmp_path / "b.h5").exists()
    assert main(["extract", "--model", str(tmp_path / "a"), *common, "--out", str(tmp_path / "a.h5")]) == 0


def test_rows_carry_their_tokenizer_so_a_copied_file_is_refused(tmp_path, capsys):
    """Each row records the tokenizer it was made with, so a file without its sidecar (copied, or the
    ``<out>.continuations.jsonl`` extract --data writes) is refused on another model's tokenizer too."""
    import shutil

    from interp.cli.main import main
    from interp.generate.continuations import load_jsonl
    from interp.spans.render import tokenizer_sha256
    from interp.testing import tiny_model

    toks = {}
    for name, (arch, family) in {"a": ("qwen2", "qwen2"), "b": ("llama", "llama3")}.items():
        model, tok = tiny_model(arch, family, n_layers=2)
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
        toks[name] = tok
    made = tmp_path / "a.h5"
    assert main(["extract", "--model", str(tmp_path / "a"), "--data", "demo", "--limit", "2", "--depths", "0,2",
                 "--layers", "0", "--out", str(made)]) == 0
    written = made.with_suffix(".continuations.jsonl")
    rows = load_jsonl(written)
    assert rows and {r.tokenizer_sha256 for r in rows} == {tokenizer_sha256(toks["a"])}
    copied = tmp_path / "copied.jsonl"  # no sidecar beside it
    shutil.copy(written, copied)
    capsys.readouterr()
    assert main(["extract", "--model", str(tmp_path / "b"), "--continuations", str(copied), "--depths", "0,2",
                 "--layers", "0", "--out", str(tmp_path / "b.h5")]) == 2
    err = capsys.readouterr().err
    assert "was made with another tokenizer" in err and "Traceback" not in err
    assert not (tmp_path / "b.h5").exists()
