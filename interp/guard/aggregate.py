"""How the guard turns an answer's sequence of check scores into "fire": the one aggregation rule.

A rule maps the scores ``s_1, s_2, …`` of an answer's checks (in depth order) to a statistic ``a_t`` after each
check; the guard fires at the first check with ``a_t >= threshold`` (:func:`reaches`), so it fires on the answer exactly when the
answer's statistic ``max_t a_t`` reaches the threshold, the number the per-answer threshold is calibrated on.

* ``any``: ``a_t = s_t`` (the single-check rule; the default).
* ``k_of_n``: ``a_t`` = the k-th largest of the last ``n`` scores (``-inf`` while fewer than k): it reaches the
  threshold exactly when at least k of the last n checks did.
* ``ema``: ``a_1 = s_1``, ``a_t = alpha s_t + (1 - alpha) a_{t-1}``.

``k_of_n`` with k = 1 and ``ema`` with alpha = 1 are ``any``, and :meth:`Aggregation.of` writes them so.
:class:`Stream` is the incremental form the live guard feeds one check at a time; :meth:`Aggregation.series` is
the direct form offline calibration uses (explicit windows, the EMA as a weighted sum); tests require both to
agree. A detector without a score (a keyword match) is aggregated on its flags (1.0 / 0.0, threshold 0.5).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from interp import UserError

AGGREGATES = ("any", "k_of_n", "ema")
FLAG_THRESHOLD = 0.5  # the threshold a flag-only detector's 1.0 / 0.0 values are compared with


@dataclass
class AggregateConfig:
    """The aggregation options, shared by the guard's, ``train``'s (the rule a threshold is calibrated for) and
    ``evaluate``'s configs; :meth:`Aggregation.of` validates them."""

    aggregate: str = field(default="any", metadata={
        "help": "how an answer's checks make the guard fire: any (one flagged check), k_of_n (k of the last n "
                "checks), ema (moving average of check scores)", "choices": AGGREGATES})
    k_of_n: int = field(default=1, metadata={"help": "--aggregate k_of_n: flagged checks needed (k)"})
    window: int = field(default=1, metadata={"help": "--aggregate k_of_n: the last n checks counted (n >= k)"})
    ema_alpha: float = field(default=0.5, metadata={"help": "--aggregate ema: weight of the newest score, in (0, 1]"})


@dataclass(frozen=True)
class Aggregation:
    """One aggregation rule (see the module doc); ``k``, ``n`` apply to ``k_of_n``, ``alpha`` to ``ema``."""

    kind: str = "any"
    k: int = 1
    n: int = 1
    alpha: float = 1.0

    @classmethod
    def of(cls, cfg) -> Aggregation:
        """The validated, canonical rule of an :class:`AggregateConfig` (one-line errors); ``--k-of-n`` and
        ``--window`` must keep their defaults unless the rule is ``k_of_n``."""
        kind, k, n, alpha = str(cfg.aggregate), int(cfg.k_of_n), int(cfg.window), float(cfg.ema_alpha)
        if kind not in AGGREGATES:
            raise UserError(f"--aggregate must be one of {', '.join(AGGREGATES)}, got {kind!r}")
        if k < 1:
            raise UserError(f"--k-of-n must be >= 1, got {k}")
        if n < 1:
            raise UserError(f"--window must be >= 1 (the last n checks the k-of-n rule counts), got {n}")
        if not 0 < alpha <= 1:
            raise UserError(f"--ema-alpha must be in (0, 1] (1 = no smoothing), got {alpha}")
        if kind != "k_of_n" and (k, n) != (1, 1):
            raise UserError(f"--k-of-n {k} --window {n} apply only to --aggregate k_of_n (got --aggregate {kind}); "
                            f"pass --aggregate k_of_n --k-of-n {k} --window {max(n, k)}")
        if kind == "k_of_n" and k > n:
            raise UserError(f"--k-of-n {k} is larger than --window {n}: the rule could never fire; "
                            f"use --window >= {k}")
        if kind == "k_of_n" and k > 1:
            return cls("k_of_n", k, n, 1.0)
        if kind == "ema" and alpha < 1:
            return cls("ema", 1, 1, alpha)
        return cls()

    @classmethod
    def from_dict(cls, d: dict) -> Aggregation:
        return cls(str(d["kind"]), int(d["k"]), int(d["n"]), float(d["alpha"]))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "k": self.k, "n": self.n, "alpha": self.alpha, "rule": self.describe()}

    def describe(self) -> str:
        if self.kind == "k_of_n":
            return f"{self.k} of the last {self.n} checks"
        if self.kind == "ema":
            return f"EMA of check scores (alpha {self.alpha:g})"
        return "any check"

    def stream(self) -> Stream:
        """A fresh incremental aggregator for one answer (the live guard keeps one per row and detector)."""
        return Stream(self)

    def series(self, scores: Sequence[float]) -> np.ndarray:
        """The statistic after each check of one answer, computed directly (float64): ``k_of_n`` from explicit
        windows of the last n scores, ``ema`` as ``a_t = sum_j w_tj s_j`` with the closed-form weights."""
        s = np.asarray(scores, np.float64).reshape(-1)
        if len(s) == 0:
            return s
        if self.kind == "k_of_n":
            padded = np.concatenate([np.full(self.n - 1, -np.inf), s])
            windows = np.lib.stride_tricks.sliding_window_view(padded, self.n)  # [T, n], last n scores at each t
            return np.sort(windows, axis=1)[:, -self.k]
        if self.kind == "ema":
            t = np.arange(len(s))
            lag = t[:, None] - t[None, :]  # t - j
            w = np.where(lag >= 0, self.alpha * (1 - self.alpha) ** np.clip(lag, 0, None), 0.0)
            w[:, 0] = (1 - self.alpha) ** t  # a_1 = s_1: the first score keeps the weight not yet given to others
            return w @ s
        return s

    def answer_statistic(self, scores: Sequence[float]) -> float:
        """``max_t a_t`` over one answer's check scores: the answer fires iff this reaches the threshold
        (``-inf`` when no check can fire, NaN for no scores)."""
        a = self.series(scores)
        return float(a.max()) if len(a) else float("nan")


def reaches(value: float, threshold: float) -> bool:
    """Whether a statistic reaches the threshold, compared in float64 as the checker's ``score >= threshold``
    flags are (so the default rule fires exactly where a flag is raised)."""
    return bool(np.float64(value) >= np.float64(threshold))


class Stream:
    """Incremental form of a rule for one answer: :meth:`push` a check's score, get the statistic ``a_t``."""

    def __init__(self, rule: Aggregation):
        self.rule = rule
        self.last: deque[float] = deque(maxlen=rule.n)
        self.value: float | None = None

    def push(self, score: float) -> float:
        r, s = self.rule, float(score)
        if r.kind == "k_of_n":
            self.last.append(s)
            self.value = sorted(self.last)[-r.k] if len(self.last) >= r.k else -np.inf
        elif r.kind == "ema":
            self.value = s if self.value is None else r.alpha * s + (1 - r.alpha) * self.value
        else:
            self.value = s
        return self.value
