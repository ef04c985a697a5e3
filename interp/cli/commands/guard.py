"""``anydepth guard``: stream one guarded reply to the terminal, marking each check."""

from __future__ import annotations

import sys

from interp.config import add_arguments, from_namespace
from interp.guard.session import GuardRunConfig
from interp.guard.types import GuardConfig


def register(subparsers) -> None:
    p = subparsers.add_parser("guard", help="stream a reply under the ADA guard (ADA-LP or ADA-RK)")
    add_arguments(p, GuardRunConfig)
    add_arguments(p, GuardConfig)
    p.set_defaults(func=run)


def printer(rc: GuardRunConfig):
    """An ``on_event`` that writes the reply to stdout as it grows and the check markers to stderr."""
    out, err = sys.stdout, sys.stderr
    emitted: list[int] = []
    shown = [""]

    def on_event(tokenizer, row: int, kind: str, payload) -> None:
        if kind == "tokens":  # decode the whole reply so far: multi-byte characters print correctly
            emitted.extend(payload)
            text = tokenizer.decode(emitted, skip_special_tokens=True)
            out.write(text[len(shown[0]):])
            shown[0] = text
            out.flush()
        elif kind == "check" and not rc.quiet_checks:
            detail = f"p={payload.score:.3f}" if payload.score is not None else repr((payload.lookahead or "")[:40])
            err.write(f"\x1b[2m[{payload.detector} check @{payload.depth}: {'FLAG' if payload.flagged else 'ok'} "
                      f"{detail}]\x1b[0m")
            err.flush()
        elif kind == "halt":
            err.write(f"\n[halted at depth {payload}]\n")

    return on_event, emitted


def run(args) -> int:
    from interp.guard.session import guarded_reply

    rc, cfg = from_namespace(GuardRunConfig, args), from_namespace(GuardConfig, args)
    on_event, emitted = printer(rc)
    res, _ = guarded_reply(rc, cfg, on_event)
    if res.halted and cfg.refusal_message:
        sys.stdout.write(("\n" if emitted else "") + cfg.refusal_message)
    sys.stdout.write("\n")
    sys.stderr.write(f"[{res.stop_reason}: {len(res.generated_ids)} tokens generated, {len(res.emitted_ids)} "
                     f"emitted, {len(res.checks)} checks]\n")
    return 0
