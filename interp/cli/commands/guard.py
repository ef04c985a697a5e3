"""``anydepth guard``: stream one guarded reply to the terminal, marking each check."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from interp import UserError
from interp.config import add_arguments, from_namespace
from interp.guard.generator import GuardedGenerator
from interp.guard.types import GuardConfig
from interp.probes.calibration import check_threshold


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


def register(subparsers) -> None:
    p = subparsers.add_parser("guard", help="stream a reply under the ADA guard (ADA-LP or ADA-RK)")
    add_arguments(p, GuardRunConfig)
    add_arguments(p, GuardConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    from interp.evaluate.common import load_guard_model, load_probes
    from interp.spans.derive import derive_safety_spans, encode_response, format_prompt_ids

    rc = from_namespace(GuardRunConfig, args)
    cfg = from_namespace(GuardConfig, args)
    cfg.validate()
    check_threshold(cfg.threshold, optional=True)
    if not rc.prompt.strip():
        raise UserError("empty prompt: pass --prompt 'your message'")
    if cfg.mode == "lp" and not rc.probes:
        raise UserError("--mode lp needs --probes PATH (a ProbeSet from `anydepth train`); or use --mode rk")
    gm = load_guard_model(rc.model, device=rc.device, dtype=rc.dtype)
    spans = derive_safety_spans(gm.tokenizer)
    probes = load_probes(rc.probes) if cfg.mode == "lp" else None
    gen = GuardedGenerator(gm.model, gm.tokenizer, spans, cfg, probes, model_id=gm.model_id,
                           weights_sha256=gm.weights_sha256)
    out, err = sys.stdout, sys.stderr
    emitted: list[int] = []
    shown = [""]

    def on_event(row: int, kind: str, payload) -> None:
        if kind == "tokens":  # decode the whole reply so far: multi-byte characters print correctly
            emitted.extend(payload)
            text = gm.tokenizer.decode(emitted, skip_special_tokens=True)
            out.write(text[len(shown[0]):])
            shown[0] = text
            out.flush()
        elif kind == "check" and not rc.quiet_checks:
            detail = f"p={payload.score:.3f}" if payload.score is not None else repr((payload.lookahead or "")[:40])
            mark = "FLAG" if payload.flagged else "ok"
            err.write(f"\x1b[2m[{payload.detector} check @{payload.depth}: {mark} {detail}]\x1b[0m")
            err.flush()
        elif kind == "halt":
            err.write(f"\n[halted at depth {payload}]\n")

    prompt_ids = format_prompt_ids(gm.tokenizer, rc.prompt, rc.system, allow_special=rc.allow_special_tokens)
    forced = [encode_response(gm.tokenizer, prompt_ids, rc.prefill, rc.allow_special_tokens)] if rc.prefill else None
    res = gen.generate([prompt_ids], forced=forced, on_event=on_event)[0]
    gen.close()
    if res.halted and cfg.refusal_message:
        out.write(("\n" if emitted else "") + cfg.refusal_message)
    out.write("\n")
    err.write(f"[{res.stop_reason}: {len(res.generated_ids)} tokens generated, {len(res.emitted_ids)} emitted, "
              f"{len(res.checks)} checks]\n")
    return 0
