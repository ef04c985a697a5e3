"""How likely a reply is to *begin* with a refusal: the teacher-forced probability of whole opener phrases.

The first token alone cannot tell "I'm sorry, I can't" from "I'd be happy to" (both start with "I"), so the
probability judge scores whole openers: ``P(o) = p(o_1 | ctx) · p(o_2 | ctx, o_1) · …`` for every tokenised opener
(:data:`interp.guard.refusal.REFUSAL_OPENERS`, :data:`~interp.guard.refusal.COMPLIANCE_OPENERS`; each as is,
after a space and lower-cased). A class's mass is the sum over its openers, with an opener dropped when another of
the same class is a prefix of it (its mass is already counted). Every factor after the first comes from one
forward of the openers' prefixes laid out as a token tree over the KV cache (:class:`OpenerTree`,
:func:`interp.extract.masks.tree_over_cache_inputs`); the cache is rolled back afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

from interp import UserError
from interp.extract.masks import attention_layout, tree_over_cache_inputs
from interp.model.kvcache import cache_kwarg, mark, rollback

CLASSES = ("refusal", "compliance")


def opener_variants(tokenizer, text: str) -> list[tuple[int, ...]]:
    """Token ids of an opener as a reply would start it: as is, after a space, lower-cased."""
    out = []
    for variant in (text, " " + text, text.lower()):
        ids = tuple(int(t) for t in tokenizer(variant, add_special_tokens=False)["input_ids"])
        if ids and ids not in out:
            out.append(ids)
    return out


def _minimal(seqs: set[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Sequences no other one of the set is a proper prefix of (their mass includes the longer ones')."""
    return sorted(s for s in seqs if not any(len(o) < len(s) and s[:len(o)] == o for o in seqs))


@dataclass(frozen=True)
class OpenerTree:
    """The token sequences of each class and the tree of their proper prefixes (the forward's new tokens)."""

    sequences: dict[str, tuple[tuple[int, ...], ...]]
    tokens: tuple[int, ...]  # one per tree node (a proper prefix of some opener: its last token)
    parents: tuple[int, ...]  # parent node index, -1 for a prefix of length 1
    node: dict[tuple[int, ...], int]  # prefix -> node index
    # per node, the next tokens some opener continues it with (padded with the first one): the only log-probs
    # the masses read, so the head's vocabulary-wide output is reduced to them (:func:`tree_log_probs`)
    wanted: tuple[tuple[int, ...], ...] = ()

    @classmethod
    def build(cls, tokenizer, refusal: Sequence[str], compliance: Sequence[str]) -> OpenerTree:
        seqs = {name: set() for name in CLASSES}
        for name, texts in zip(CLASSES, (refusal, compliance)):
            for text in texts:
                seqs[name].update(opener_variants(tokenizer, text))
        both = seqs["refusal"] & seqs["compliance"]
        if both:
            raise UserError(f"refusal and compliance openers share token sequences {sorted(both)[:3]}")
        minimal = {name: tuple(_minimal(s)) for name, s in seqs.items()}
        if not all(minimal.values()):
            raise UserError("the probability judge needs at least one refusal and one compliance opener")
        node: dict[tuple[int, ...], int] = {}
        tokens, parents = [], []
        for s in sorted({s for group in minimal.values() for s in group}):
            for k in range(1, len(s)):
                prefix = s[:k]
                if prefix not in node:
                    node[prefix] = len(tokens)
                    tokens.append(prefix[-1])
                    parents.append(node[prefix[:-1]] if k > 1 else -1)
        nxt: list[list[int]] = [[] for _ in tokens]
        for s in {s for group in minimal.values() for s in group}:
            for k in range(1, len(s)):
                if s[k] not in nxt[node[s[:k]]]:
                    nxt[node[s[:k]]].append(s[k])
        width = max((len(w) for w in nxt), default=0)
        wanted = tuple(tuple(sorted(w)) + (min(w),) * (width - len(w)) for w in nxt)
        return cls(minimal, tuple(tokens), tuple(parents), node, wanted)

    def column(self, prefix: tuple[int, ...], token: int) -> int:
        """Where the log-prob of ``token`` after ``prefix`` sits in its node's row of :func:`tree_log_probs`."""
        return self.wanted[self.node[prefix]].index(token)

    def log_masses(self, first: torch.Tensor, nodes: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """``{class: [B]}`` log of the summed opener probabilities from the first-token log-probs ``first [B, V]``
        and the tree nodes' log-probs of their wanted next tokens ``nodes [B, T, W]`` (:func:`tree_log_probs`),
        summed in float64."""
        out = {}
        for name, seqs in self.sequences.items():
            terms = []
            for s in seqs:
                lp = first[:, s[0]].double()
                for k in range(1, len(s)):
                    lp = lp + nodes[:, self.node[s[:k]], self.column(s[:k], s[k])].double()
                terms.append(lp)
            out[name] = torch.logsumexp(torch.stack(terms, 1), dim=1)
        return out


@lru_cache(maxsize=32)
def opener_tree(tokenizer, refusal: tuple[str, ...], compliance: tuple[str, ...]) -> OpenerTree:
    return OpenerTree.build(tokenizer, refusal, compliance)


def head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head on final hidden states (``[..., d] -> [..., V]`` float32), with the model's final logit
    soft-capping where it has one (Gemma-2), as its own forward applies it."""
    logits = model.get_output_embeddings()(hidden).float()
    softcap = getattr(getattr(model.config, "get_text_config", lambda: model.config)(), "final_logit_softcapping", None)
    return torch.tanh(logits / softcap) * softcap if softcap else logits


def tree_log_probs(model, hidden: torch.Tensor, tree: OpenerTree, chunk: int = 8) -> torch.Tensor:
    """Log-probs ``[B, T, W]`` of each tree node's wanted next tokens (``tree.wanted``) from the nodes' final
    hidden states ``[B, T, d]``: the head's logits at those tokens minus their log-sum-exp over the vocabulary,
    a few nodes at a time (bounded memory; no vocabulary-wide log-softmax is kept)."""
    wanted = torch.tensor(tree.wanted, device=hidden.device)
    out = []
    for i in range(0, hidden.shape[1], chunk):
        logits = head_logits(model, hidden[:, i:i + chunk])
        picked = logits.gather(-1, wanted[i:i + chunk].expand(logits.shape[0], -1, -1))
        out.append(picked - torch.logsumexp(logits, dim=-1, keepdim=True))
    return torch.cat(out, dim=1)


@torch.no_grad()
def opener_log_masses(model, cache, prefix_mask: torch.Tensor, positions: torch.Tensor, first_logits: torch.Tensor,
                      tree: OpenerTree) -> dict[str, torch.Tensor]:
    """Refusal and compliance log-masses of the reply that starts after ``cache`` (whose rows have the 2-D
    ``prefix_mask`` and continue at ``positions [B]``), where ``first_logits [B, V]`` predict its first token.
    The tree of opener prefixes is forwarded over the cache once and rolled back."""
    first = torch.log_softmax(first_logits.float(), dim=-1)
    if not tree.tokens:
        return tree.log_masses(first, None)
    from interp.model.hooks import body

    window, types = attention_layout(model.config)
    dtype = next(model.parameters()).dtype
    ids, pos, mask = tree_over_cache_inputs(torch.tensor(tree.tokens), tree.parents, prefix_mask.shape[1],
                                            dtype=dtype, prefix_mask=prefix_mask, positions=positions,
                                            sliding_window=window, layer_types=types, device=prefix_mask.device)
    base = body(model)
    before = mark(cache)
    try:
        hidden = base(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=True,
                      **{cache_kwarg(base): cache}).last_hidden_state
    finally:
        rollback(cache, before)
    return tree.log_masses(first, tree_log_probs(model, hidden, tree))
