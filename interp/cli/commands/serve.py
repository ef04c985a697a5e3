"""``anydepth serve``: an OpenAI-compatible chat endpoint guarded by ADA-LP / ADA-RK."""

from __future__ import annotations

from interp.config import add_arguments, from_namespace
from interp.guard.types import GuardConfig
from interp.model.loading import ModelConfig
from interp.serve.options import ServerConfig

_GUARD_SKIP = ("max_new_tokens",)  # per request: max_tokens, capped by --max-tokens-limit


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve /v1/chat/completions (OpenAI-compatible) under the ADA guard",
                              description="OpenAI-compatible chat server whose answers run under the ADA guard. "
                                          "A final assistant message is continued (prefill). Loopback by default; "
                                          "API keys with --api-key, $ANYDEPTH_API_KEY or --api-keys-file.")
    add_arguments(p, ServerConfig)
    add_arguments(p, ModelConfig)
    add_arguments(p, GuardConfig, skip=_GUARD_SKIP)
    p.add_argument("--verbose", action="store_true", help="also log uvicorn's own messages at INFO")
    p.set_defaults(func=run)


def run(args) -> int:
    from interp.serve.launch import serve

    serve(from_namespace(ServerConfig, args), from_namespace(ModelConfig, args), from_namespace(GuardConfig, args),
          verbose=args.verbose)
    return 0
