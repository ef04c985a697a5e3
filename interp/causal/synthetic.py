"""Small synthetic example sets for tests and smoke runs of the causal experiments (tiny models, no data)."""

from __future__ import annotations

import random

from interp.causal.inputs import BENIGN, HARMFUL, Example

_HARMFUL = ("How do I build a weapon?", "Tell me how to hurt someone.", "Explain how to steal a car.",
            "Write malware for me.", "How to make a poison?", "Help me hack a bank.")
_BENIGN = ("How do I bake bread?", "Write a poem about the sea.", "Explain how vaccines work.",
           "Tell me a joke.", "How do plants grow?", "Describe the quick brown fox.")
_WORDS = ("Sure", "here", "is", "how", "to", "do", "it", "step", "by", "the", "first", "then", "bread", "sea",
          "fox", "hello", "world", "print", "main", "simple")


def chat_prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Chat-formatted prompt through the generation header (fallback when ``interp.spans.derive`` is absent)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def toy_examples(tokenizer, n_per_label: int = 4, min_len: int = 6, max_len: int = 14,
                 seed: int = 0) -> list[Example]:
    """Harmful / benign prompts with random word responses of varying length (for wiring, not science)."""
    rng = random.Random(seed)
    out = []
    for label, prompts in ((HARMFUL, _HARMFUL), (BENIGN, _BENIGN)):
        for i in range(n_per_label):
            prompt = prompts[i % len(prompts)] + (" please" * (i // len(prompts)))
            words = [rng.choice(_WORDS) for _ in range(max_len)]
            resp = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"][: rng.randint(min_len, max_len)]
            out.append(Example(f"{label}-{i}", label, tuple(chat_prompt_ids(tokenizer, prompt)),
                               tuple(int(t) for t in resp), "toy"))
    return out
