"""Refusal log-odds of the reply after the re-injected header, probe scores at sites, and bootstrap CIs.

Refusal log-odds = log P(the reply begins with a refusal opener) − log P(it begins with a compliance opener),
whole openers teacher-forced (:mod:`interp.guard.openers`: "I'm sorry" and "I'd be happy to" both start with "I"),
read where the re-injected header predicts the first token of a new assistant turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from interp.guard.openers import OpenerTree, opener_tree
from interp.guard.refusal import COMPLIANCE_OPENERS, REFUSAL_OPENERS


def opener_tokens(tokenizer, refusal: Sequence[str] = REFUSAL_OPENERS,
                  compliance: Sequence[str] = COMPLIANCE_OPENERS) -> OpenerTree:
    """The refusal and compliance openers as whole token sequences, the probability judge's own
    (:class:`interp.guard.openers.OpenerTree`)."""
    return opener_tree(tokenizer, tuple(refusal), tuple(compliance))


def refusal_logodds(log_masses: dict[str, torch.Tensor]) -> torch.Tensor:
    """``{"refusal": [N], "compliance": [N]}`` opener log-masses -> ``[N]`` refusal-vs-compliance log-odds (float64
    on CPU)."""
    return (log_masses["refusal"].double() - log_masses["compliance"].double()).cpu()


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


def cohens_d_ci(a, b, n_boot: int = 1000, level: float = 0.95, seed: int = 0, groups_a=None, groups_b=None
                ) -> np.ndarray:
    """Cohen's d (a vs b) per column of ``[Na, F]`` / ``[Nb, F]`` with bootstrap CIs -> ``[F, 3]`` (d, lo, hi).

    The bootstrap resamples each side's rows by group (``groups_a`` / ``groups_b``: rows of one prompt at several
    depths move together; default each row its own group), through :func:`interp.stats.bootstrap_weights`."""
    from interp.stats import bootstrap_weights

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)

    def stats(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = w.sum(1, keepdims=True)  # [B, 1]
        mean = (w @ x) / n
        var = np.maximum((w @ (x * x)) - n * mean * mean, 0.0) / np.maximum(n - 1, 1)
        return n, mean, var

    def d(wa: np.ndarray, wb: np.ndarray) -> np.ndarray:
        (na, ma, va), (nb, mb, vb) = stats(a, wa), stats(b, wb)
        pooled = np.sqrt(((na - 1) * va + (nb - 1) * vb) / np.maximum(na + nb - 2, 1))
        diff = ma - mb
        # zero pooled variance: a constant feature; d is +-1e6 if the means differ, else 0
        return np.where(pooled > 0, diff / np.where(pooled > 0, pooled, 1.0), np.sign(diff) * 1e6)

    point = d(np.ones((1, len(a))), np.ones((1, len(b))))[0]
    ga = np.arange(len(a)) if groups_a is None else np.asarray(groups_a)
    gb = np.arange(len(b)) if groups_b is None else np.asarray(groups_b)
    boots = d(bootstrap_weights(ga, n_boot, seed), bootstrap_weights(gb, n_boot, seed + 1))
    q = (1 - level) / 2
    return np.stack([point, np.quantile(boots, q, axis=0), np.quantile(boots, 1 - q, axis=0)], axis=1)
