"""Tiny randomly initialised chat models for tests, notebooks and benchmarks (no network).

``tiny_tokenizer(family)`` builds a small byte-level BPE tokenizer (trained in milliseconds on a
fixed corpus) with the special tokens and a Jinja chat template in the style of a real model family.
``tiny_model(arch)`` pairs it with a 2–4 layer random Llama, Qwen2 or Gemma-2 causal LM in float32.
The templates under ``interp/spans/templates_data/`` are our own renditions of each family's published format.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import torch

# family -> (special tokens, bos, eos, pad)
_FAMILIES: dict[str, tuple[tuple[str, ...], str | None, str, str]] = {
    "qwen2": (("<|endoftext|>", "<|im_start|>", "<|im_end|>"), None, "<|im_end|>", "<|endoftext|>"),
    "smollm2": (("<|endoftext|>", "<|im_start|>", "<|im_end|>"), "<|im_start|>", "<|im_end|>", "<|endoftext|>"),
    "llama3": (("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>"), "<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>"),
    "gemma2": (("<pad>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"), "<bos>", "<end_of_turn>", "<pad>"),
    "mistral": (("<unk>", "<s>", "</s>", "[INST]", "[/INST]"), "<s>", "</s>", "<unk>"),
    "phi3": (("<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"), None, "<|end|>",
             "<|endoftext|>"),
}
FAMILIES = tuple(_FAMILIES)
ARCH_DEFAULT_FAMILY = {"llama": "llama3", "qwen2": "qwen2", "gemma2": "gemma2"}

_CORPUS = [
    "user assistant model system You are a helpful assistant.",
    "How do I bake bread? Sure, here is how to bake bread step by step.",
    "I'm sorry, but I can't help with that request. I cannot assist with this.",
    "The quick brown fox jumps over the lazy dog. Hello world! 0123456789",
    "Write a poem about the sea. Explain how vaccines work in simple terms.",
    "def main():\n    print('hello')\n\nimport os\n",
]


def chat_template(family: str) -> str:
    """The Jinja chat template text of a test family."""
    return resources.files("interp.spans.templates_data").joinpath(f"{family}.jinja").read_text()


@cache
def _base_tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(family: str = "qwen2", vocab_size: int = 400):
    """A fast tokenizer with ``family``'s special tokens and chat template (byte-level: encodes any text)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    if family not in _FAMILIES:
        raise ValueError(f"unknown test family {family!r}; known: {', '.join(FAMILIES)}")
    specials, bos, eos, pad = _FAMILIES[family]
    tok = Tokenizer.from_str(_base_tokenizer_json(vocab_size))
    tok.add_special_tokens(list(specials))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad)
    fast.chat_template = chat_template(family)
    fast.name_or_path = f"tiny-{family}"
    return fast


@dataclass(frozen=True)
class TinySpec:
    arch: str = "qwen2"
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    n_kv_heads: int = 2
    d_mlp: int = 128
    sliding_window: int = 32
    seed: int = 0


def tiny_config(spec: TinySpec, vocab_size: int, bos_id: int | None, eos_id: int | None, pad_id: int | None):
    """A transformers config for ``spec`` (eager attention, float32)."""
    from transformers import Gemma2Config, LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, hidden_size=spec.d_model, intermediate_size=spec.d_mlp,
                  num_hidden_layers=spec.n_layers, num_attention_heads=spec.n_heads,
                  num_key_value_heads=spec.n_kv_heads, max_position_embeddings=4096,
                  bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id, tie_word_embeddings=False)
    if spec.arch == "llama":
        cfg = LlamaConfig(**common)
    elif spec.arch == "qwen2":
        cfg = Qwen2Config(**common)
    elif spec.arch == "gemma2":
        head_dim = spec.d_model // spec.n_heads
        cfg = Gemma2Config(**common, head_dim=head_dim, query_pre_attn_scalar=head_dim,
                           sliding_window=spec.sliding_window)
    else:
        raise ValueError(f"unknown tiny arch {spec.arch!r}; use llama, qwen2 or gemma2")
    cfg._attn_implementation = "eager"
    return cfg


def tiny_model(arch: str = "qwen2", family: str | None = None, **spec_kwargs):
    """``(model, tokenizer)``: a random ``arch`` model in eval mode with a ``family`` chat template."""
    from transformers import AutoModelForCausalLM

    spec = TinySpec(arch=arch, **spec_kwargs)
    tok = tiny_tokenizer(family or ARCH_DEFAULT_FAMILY[arch])
    cfg = tiny_config(spec, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    # Random init is small; scale up so that attention patterns are far from uniform and
    # positional / masking mistakes show up as large differences in tests.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.mul_(4.0)
    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def hf_greedy_text(model, tokenizer, ids: list[int], n: int) -> str:
    """Reference: HF greedy decoding of ``n`` tokens after ``ids`` (no EOS stop), cut at EOS and decoded."""
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None)
    new = out[0, len(ids):].tolist()
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id)]
    return tokenizer.decode(new, skip_special_tokens=True)


def tiny_wrapped_model(family: str = "llama3", **spec_kwargs):
    """``(wrapped, plain, tokenizer)``: a random Llama language model and the same weights inside a tiny
    Llava (decoder layers at ``model.language_model.layers``), for tests of vision-language wrappers."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    plain, tok = tiny_model("llama", family, **spec_kwargs)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=8, patch_size=4)
    cfg = LlavaConfig(text_config=plain.config, vision_config=vision, image_token_index=len(tok))
    cfg._attn_implementation = "eager"
    wrapped = LlavaForConditionalGeneration(cfg).eval()
    wrapped.model.language_model.load_state_dict(plain.model.state_dict())
    wrapped.lm_head.load_state_dict(plain.lm_head.state_dict())
    wrapped.generation_config.pad_token_id = tok.pad_token_id
    return wrapped, plain, tok
