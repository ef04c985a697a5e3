"""Refusal log-odds at the header's next token, probe scores at sites, and bootstrap confidence intervals.

Refusal log-odds = logsumexp of the log-probs of the first tokens of refusal openers minus the same for
compliance openers, read where the re-injected header predicts the first token of a new assistant turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from interp import UserError
from interp.guard.refusal import COMPLIANCE_OPENERS, REFUSAL_OPENERS, opener_ids


@dataclass(frozen=True)
class OpenerTokens:
    """First-token ids of refusal and compliance openers (disjoint)."""

    refusal: tuple[int, ...]
    compliance: tuple[int, ...]


def opener_tokens(tokenizer, refusal: Sequence[str] = REFUSAL_OPENERS,
                  compliance: Sequence[str] = COMPLIANCE_OPENERS) -> OpenerTokens:
    """First tokens of the refusal and compliance openers (:func:`interp.guard.refusal.opener_ids`, the judge's
    own tokenization); ids that open both are dropped."""
    r, c = set(opener_ids(tokenizer, tuple(refusal))), set(opener_ids(tokenizer, tuple(compliance)))
    both = r & c
    r, c = sorted(r - both), sorted(c - both)
    if not r or not c:
        raise UserError("refusal and compliance openers share all first tokens; give distinct openers")
    return OpenerTokens(tuple(r), tuple(c))


def refusal_logodds(logits: torch.Tensor, openers: OpenerTokens) -> torch.Tensor:
    """``[N, V]`` next-token logits -> ``[N]`` refusal-vs-compliance log-odds (float64 on CPU)."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    r = torch.logsumexp(logp[:, list(openers.refusal)], dim=-1)
    c = torch.logsumexp(logp[:, list(openers.compliance)], dim=-1)
    return (r - c).cpu()


class Probe(Protocol):
    """What the experiments need from a probe set: logits (not probabilities) and unit directions per layer
    (``interp.probes.ProbeSet.logit`` / ``direction``, adapted by :class:`interp.causal.experiment.ProbeAdapter`)."""

    layers: Sequence[int]

    def logit(self, hidden: torch.Tensor, layer: int) -> torch.Tensor: ...

    def direction(self, layer: int) -> torch.Tensor: ...


def probe_logits(probe: Probe, hidden: torch.Tensor, layer: int) -> torch.Tensor:
    """Probe logit for ``[N, d]`` hidden states at ``layer`` as a float64 CPU tensor."""
    out = probe.logit(hidden, layer)
    return torch.as_tensor(np.asarray(out.detach().cpu() if torch.is_tensor(out) else out), dtype=torch.float64)


def cohens_d_ci(a, b, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> np.ndarray:
    """Cohen's d (a vs b) per column of ``[Na, F]`` / ``[Nb, F]`` with bootstrap CIs -> ``[F, 3]`` (d, lo, hi)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)

    def d(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        nx, ny = x.shape[-2], y.shape[-2]
        vx, vy = x.var(axis=-2, ddof=1), y.var(axis=-2, ddof=1)
        pooled = np.sqrt(((nx - 1) * vx + (ny - 1) * vy) / max(nx + ny - 2, 1))
        diff = x.mean(axis=-2) - y.mean(axis=-2)
        # zero pooled variance: a constant feature; d is +-1e6 if the means differ, else 0
        return np.where(pooled > 0, diff / np.where(pooled > 0, pooled, 1.0), np.sign(diff) * 1e6)

    point = d(a, b)
    rng = np.random.default_rng(seed)
    boots = np.empty((n_boot, a.shape[1]))
    for i in range(n_boot):
        boots[i] = d(a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))])
    q = (1 - level) / 2
    return np.stack([point, np.quantile(boots, q, axis=0), np.quantile(boots, 1 - q, axis=0)], axis=1)
