"""interp.naming.slug: run and output file names stay what the two former _slug helpers gave (no downloads)."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest

from interp.data.registry import dataset_names
from interp.model.catalogue import CATALOGUE
from interp.naming import file_slug as generate_slug
from interp.naming import run_slug as demo_slug
from interp.naming import slug


# The helpers as they were before interp.naming (copied verbatim): the reference the new code must match.
def old_generate_slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(text).name if "/" in text else text).strip("-") or "data"


def old_demo_slug(text: str) -> str:
    text = Path(text).name if os.sep in text or text.startswith(".") else text
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in text).strip("-").lower()[:60]


NAMES = ["qwen2.5-coder-0.5b-instruct", "Qwen/Qwen2.5-0.5B-Instruct", "/path/to/model.gguf", "tiny:llama",
         "models/x/", "./local-model", "~/ckpt/My Model (v2)", "a  b", "a:-b", "modèle/ünïcode", "日本語モデル",
         ".", "..", ".hidden", "", "---", "demo", "harmful.jsonl", "jailbreakbench/PAIR", "x" * 80]
EXISTING = sorted({*CATALOGUE, *(a for e in CATALOGUE.values() for a in e.aliases), *dataset_names()})


def random_names(n: int = 2000) -> list[str]:
    rng = random.Random(0)
    alphabet = "aZ09._-/: \t~()éß٣日_"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(n)]


@pytest.mark.parametrize("text", NAMES + EXISTING)
def test_same_names_as_before(text):
    assert generate_slug(text) == old_generate_slug(text)
    assert demo_slug(text) == old_demo_slug(text)


def test_same_names_as_before_random():
    texts = random_names()
    assert [generate_slug(t) for t in texts] == [old_generate_slug(t) for t in texts]
    assert [demo_slug(t) for t in texts] == [old_demo_slug(t) for t in texts]


def test_existing_names_are_covered():
    assert "qwen2.5-coder-0.5b-instruct" in EXISTING and "demo" in EXISTING


@pytest.mark.parametrize("text, file_part, folder", [
    ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-0.5b-instruct"),
    ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen2.5-0.5B-Instruct", "qwen2.5-0.5b-instruct"),
    ("/path/to/model.gguf", "model.gguf", "model.gguf"),
    ("tiny:llama", "tiny-llama", "tiny-llama"),
    ("a  b", "a-b", "a--b"),
    ("modèle", "mod-le", "modèle"),
    ("", "data", ""),
])
def test_literal_names(text, file_part, folder):
    assert generate_slug(text) == file_part
    assert demo_slug(text) == folder


def test_slug_core():
    assert slug("") == "" and slug(":::") == ""
    assert slug("x" * 80) == "x" * 80  # no length cap in the shared rule; the demo caps its folders at 60
    assert slug("Org/Name", unicode=True) == "Name"
