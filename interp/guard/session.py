"""One guarded reply from a model spec, a probe set and a prompt (what ``anydepth guard`` streams)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from interp import UserError
from interp.guard.generator import GuardedGenerator
from interp.guard.types import GuardConfig, GuardResult
from interp.probes.calibration import check_threshold

__all__ = ["GuardRunConfig", "guarded_reply"]


@dataclass
class GuardRunConfig:
    """What to guard: the model, the probe set and the prompt."""

    prompt: str = field(default="", metadata={"help": "user message to answer"})
    model: str = field(default="qwen2.5-coder-0.5b-instruct", metadata={"help": "model spec or tiny[:arch]"})
    probes: str | None = field(default=None, metadata={"help": "ProbeSet path (needed for --mode lp)"})
    system: str | None = field(default=None, metadata={"help": "system prompt"})
    prefill: str = field(default="", metadata={
        "help": "assistant text forced before the model continues (a deep-prefill attack); shown, then checked"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda"})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16"})
    quiet_checks: bool = field(default=False, metadata={"help": "do not print check markers"})
    allow_special_tokens: bool = field(default=False, metadata={
        "help": "encode special-token strings in the prompt and prefill as special tokens (default: plain text)"})

    def validate(self, cfg: GuardConfig) -> None:
        cfg.validate()
        check_threshold(cfg.threshold, optional=True)
        if not self.prompt.strip():
            raise UserError("empty prompt: pass --prompt 'your message'")
        if cfg.mode == "lp" and not self.probes:
            raise UserError("--mode lp needs --probes PATH (a ProbeSet from `anydepth train`); or use --mode rk")


def guarded_reply(rc: GuardRunConfig, cfg: GuardConfig,
                  on_event: Callable[[Any, int, str, Any], None] | None = None) -> tuple[GuardResult, Any]:
    """Answer ``rc.prompt`` (after ``rc.prefill``, forced) under the guard; returns the result and the tokenizer.
    ``on_event(tokenizer, row, kind, payload)`` sees every ``tokens`` / ``check`` / ``halt`` event as it happens."""
    from interp.evaluate.common import load_guard_model, load_probes
    from interp.spans.derive import derive_safety_spans, encode_response, format_prompt_ids

    rc.validate(cfg)
    gm = load_guard_model(rc.model, device=rc.device, dtype=rc.dtype)
    probes = load_probes(rc.probes) if cfg.mode == "lp" else None
    gen = GuardedGenerator(gm.model, gm.tokenizer, derive_safety_spans(gm.tokenizer), cfg, probes,
                           model_id=gm.model_id, weights_sha256=gm.weights_sha256)
    prompt_ids = format_prompt_ids(gm.tokenizer, rc.prompt, rc.system, allow_special=rc.allow_special_tokens)
    forced = [encode_response(gm.tokenizer, prompt_ids, rc.prefill, rc.allow_special_tokens)] if rc.prefill else None
    events = None if on_event is None else (lambda row, kind, payload: on_event(gm.tokenizer, row, kind, payload))
    try:
        return gen.generate([prompt_ids], forced=forced, on_event=events)[0], gm.tokenizer
    finally:
        gen.close()
