"""The evaluation stages, typed out: each runs one harness of the ADA guard on held-out prompts and returns an
:class:`EvaluationResult` (its JSON payload, where it was written, a headline summary)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interp import UserError
from interp.evaluate.common import EvalConfig
from interp.naming import check_out
from interp.results import Result

__all__ = ["MODES", "EvaluationResult", "evaluate_attacks", "evaluate_cost", "evaluate_deep_prefill",
           "evaluate_guard", "evaluate_over_refusal"]

MODES = {
    "deep-prefill": "refusal vs prefilled depth for base, ADA-RK and ADA-LP",
    "over-refusal": "how often each defence fires on benign prompts",
    "attacks": "JailbreakBench attack prompts: attack success with and without the guard",
    "cost": "per-check latency vs a decode step, slowdown per stride, leak window",
}


@dataclass
class EvaluationResult(Result):
    """One evaluation: ``data`` is its JSON (curves or rates with 95% CIs over prompt groups, per-row records)."""

    kind = "evaluation"
    mode: str
    path: Path
    data: dict[str, Any]

    def headline(self) -> dict:
        """The rates per detector (and depth / group), or the cost ratios: what the CLI prints."""
        d = self.data
        if self.mode == "deep-prefill":
            return {det: {p["depth"]: p["rate"] for p in pts} for det, pts in d["curves"].items()}
        if self.mode == "over-refusal":
            return {g: {k: v["rate"] for k, v in r.items()} for g, r in d["rates"].items()}
        if self.mode == "attacks":
            return {g: {k: v["rate"] for k, v in r.items()} for g, r in d["attack_success"].items()}
        return {"latency": [{k: r[k] for k in ("context_len", "decode_ms", "check_vs_decode", "early_exit_vs_decode")}
                            for r in d["latency"]],
                "slowdown": [{k: r[k] for k in ("stride", "piggyback", "early_exit", "slowdown")}
                             for r in d["slowdown"]]}

    def summary(self) -> str:
        return json.dumps(self.headline(), indent=1) + f"\nwrote {self.path}"


def _runner(mode: str) -> Callable[[EvalConfig], dict]:
    if mode == "deep-prefill":
        from interp.evaluate.deep_prefill import run_deep_prefill as fn
    elif mode == "over-refusal":
        from interp.evaluate.over_refusal import run_over_refusal as fn
    elif mode == "attacks":
        from interp.evaluate.attacks import run_attacks as fn
    elif mode == "cost":
        from interp.evaluate.cost import run_cost as fn
    else:
        raise UserError(f"unknown evaluation {mode!r} (choose {', '.join(MODES)})")
    return fn


def evaluate_guard(mode: str, cfg: EvalConfig) -> EvaluationResult:
    """Run the ``mode`` harness (deep-prefill, over-refusal, attacks or cost) with ``cfg``; written to ``cfg.out``."""
    cfg.validate()
    check_out(cfg.out, "dir")  # before the model loads
    data = _runner(mode)(cfg)
    return EvaluationResult(mode, Path(data.pop("path")), data)


def evaluate_deep_prefill(cfg: EvalConfig) -> EvaluationResult:
    """Refusal / detection per check vs prefilled depth: base model, ADA-RK, ADA-LP, on harmful deep prefills and
    a benign control arm forced the same way."""
    return evaluate_guard("deep-prefill", cfg)


def evaluate_over_refusal(cfg: EvalConfig) -> EvaluationResult:
    """How often each defence fires on benign prompts, per answer, with the live guard's schedule."""
    return evaluate_guard("over-refusal", cfg)


def evaluate_attacks(cfg: EvalConfig) -> EvaluationResult:
    """Attack success on jailbreak prompts with and without the guard."""
    return evaluate_guard("attacks", cfg)


def evaluate_cost(cfg: EvalConfig) -> EvaluationResult:
    """Check latency vs a decode step per context length, and end-to-end slowdown per stride."""
    return evaluate_guard("cost", cfg)
