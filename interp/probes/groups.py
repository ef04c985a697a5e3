"""Prompt identity and the content groups every split, fold, bootstrap and exclusion respects.

Two rows belong to one group when they are linked, directly or through others, by

* the same prompt (:func:`prompt_key`: the sha256 of the normalised text), whatever dataset or id it came under;
* the same twin pair id (namespaced by the dataset family that issued it, e.g. ``jbb:12`` for JailbreakBench
  behaviour 12 in ``jbb_harmful``, ``jbb_benign`` and ``jbb_jailbroken``);
* near-identical wording: word-set Jaccard similarity ≥ :data:`NEAR_DUPLICATE_JACCARD` (0.8) between the
  normalised prompts ("Write a tutorial on how to make a bomb" and "Write a tutorial on how to make a bomb
  using household items" are 0.73 apart and stay separate; reorderings and one-word edits of a sentence of ten
  words or more merge).

Groups are the connected components of these links (union-find), so the relation is transitive: a prompt present
in two datasets under two ids is one group, and a split can never put its copies on two sides. A group is named
``g:<smallest prompt key in it>``, which depends only on the content, not on row order.
:class:`SeenPrompts` applies the same three links to decide whether an evaluation prompt was seen in training.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

NEAR_DUPLICATE_JACCARD = 0.8
_WORD = re.compile(r"\w+")


def normalise_prompt(text: str) -> str:
    """NFKC, case-folded, curly quotes straightened, whitespace collapsed: two spellings of one prompt agree."""
    text = unicodedata.normalize("NFKC", str(text)).replace("\u2019", "'").replace("\u2018", "'")
    text = text.replace("\u201c", '"').replace("\u201d", '"')
    return re.sub(r"\s+", " ", text.casefold()).strip()


def prompt_key(text: str) -> str:
    """Identity of a prompt: the first 16 hex digits of the sha256 of its normalised text."""
    return hashlib.sha256(normalise_prompt(text).encode()).hexdigest()[:16]


def prompt_words(text: str) -> frozenset[str]:
    """The word set near duplicates are measured on (words of the normalised text)."""
    return frozenset(_WORD.findall(normalise_prompt(text)))


def word_fingerprint(words: Iterable[str]) -> list[int]:
    """A word set as sorted 32-bit hashes (what a probe set stores of the prompts it saw, instead of their text)."""
    return sorted({int(hashlib.sha256(w.encode()).hexdigest()[:8], 16) for w in words})


def jaccard(a: frozenset, b: frozenset) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def near_duplicates(sets: Sequence[frozenset], threshold: float = NEAR_DUPLICATE_JACCARD
                    ) -> list[tuple[int, int]]:
    """Every pair ``(i, j)``, ``i < j``, of sets with Jaccard ≥ ``threshold`` (exact, by prefix filtering: order
    each set's elements from rare to common; two sets that similar must share an element among the first
    ``|A| - ceil(threshold |A|) + 1`` of each). Empty sets are never near duplicates."""
    freq: dict = defaultdict(int)
    for s in sets:
        for w in s:
            freq[w] += 1
    ordered = [sorted(s, key=lambda w: (freq[w], str(w))) for s in sets]
    index: dict = defaultdict(list)
    out = []
    for j in sorted(range(len(sets)), key=lambda k: len(sets[k])):  # shorter first: a candidate is never longer
        s = ordered[j]
        if not s:
            continue
        n = len(s)
        prefix = s[: n - math.ceil(threshold * n - 1e-9) + 1]
        seen = set()
        for w in prefix:
            for i in index[w]:
                if i in seen or len(sets[i]) < threshold * n - 1e-9:
                    continue
                seen.add(i)
                if jaccard(sets[i], sets[j]) >= threshold - 1e-12:
                    out.append((min(i, j), max(i, j)))
        for w in prefix:
            index[w].append(j)
    return sorted(out)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict = {}

    def find(self, x):
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a, b) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _pair(pair_id) -> str | None:
    return None if pair_id in (None, "") else f"pair:{pair_id}"


def content_groups(prompts: Sequence[str], pair_ids: Sequence | None = None,
                   threshold: float | None = NEAR_DUPLICATE_JACCARD) -> np.ndarray:
    """The content group of every row (see the module doc): ``g:<smallest prompt key of the component>``.

    ``threshold`` None links only identical prompts and shared pair ids."""
    keys = [prompt_key(p) for p in prompts]
    uf = _UnionFind()
    for k in keys:
        uf.find(("k", k))
    for k, pid in zip(keys, pair_ids if pair_ids is not None else [None] * len(keys)):
        node = _pair(pid)
        if node is not None:
            uf.union(("k", k), ("p", node))
    if threshold is not None:
        uniq = sorted(set(keys))
        text = {k: p for k, p in zip(keys, prompts)}
        words = [prompt_words(text[k]) for k in uniq]
        for i, j in near_duplicates(words, threshold):
            uf.union(("k", uniq[i]), ("k", uniq[j]))
    smallest: dict = {}
    for k in set(keys):
        root = uf.find(("k", k))
        smallest[root] = min(smallest.get(root, k), k)
    return np.array([f"g:{smallest[uf.find(('k', k))]}" for k in keys], dtype=object).astype(str)


@dataclass
class SeenPrompts:
    """The prompts a probe set was trained or calibrated on: their keys, pair ids and word fingerprints. An
    evaluation prompt is *seen* when it is one of them, shares a pair id with one, or is a near duplicate of one
    (the links of :func:`content_groups`)."""

    keys: set[str] = field(default_factory=set)
    pair_ids: set[str] = field(default_factory=set)
    fingerprints: list[frozenset] = field(default_factory=list)
    threshold: float = NEAR_DUPLICATE_JACCARD

    @classmethod
    def of(cls, prompts: Sequence[str], pair_ids: Sequence | None = None,
           threshold: float = NEAR_DUPLICATE_JACCARD) -> SeenPrompts:
        pids = pair_ids if pair_ids is not None else [None] * len(prompts)
        uniq = {prompt_key(p): p for p in prompts}
        return cls(keys=set(uniq), pair_ids={str(p) for p in pids if p not in (None, "")},
                   fingerprints=[frozenset(word_fingerprint(prompt_words(p))) for p in uniq.values()],
                   threshold=threshold)

    def why(self, prompt: str, pair_id=None) -> str | None:
        """Why ``prompt`` counts as seen (``"prompt"``, ``"pair"``, ``"near duplicate"``), or None."""
        if prompt_key(prompt) in self.keys:
            return "prompt"
        if pair_id not in (None, "") and str(pair_id) in self.pair_ids:
            return "pair"
        mine = frozenset(word_fingerprint(prompt_words(prompt)))
        if mine and any(jaccard(mine, f) >= self.threshold - 1e-12 for f in self.fingerprints
                        if len(f) >= self.threshold * len(mine) - 1e-9):
            return "near duplicate"
        return None

    def __contains__(self, item) -> bool:
        prompt, pair_id = item if isinstance(item, tuple) else (item, None)
        return self.why(prompt, pair_id) is not None
