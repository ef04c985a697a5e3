"""Starting the guarded chat server from options: load the model and probes, warn about exposure, serve."""

from __future__ import annotations

import logging
import signal
import sys

from interp import UserError
from interp.config import to_dict
from interp.guard.types import GuardConfig
from interp.model.loading import ModelConfig
from interp.probes.calibration import check_threshold
from interp.serve.options import LOOPBACK, ServerConfig

__all__ = ["build_server", "exit_on_sigterm", "exposure_warning", "serve"]


def exit_on_sigterm() -> None:
    """Until uvicorn installs its own handlers, SIGTERM (a supervisor stopping a server that is still loading)
    ends the process with one line and exit status 143 instead of dying mid-load with no word (-15)."""
    def stop(signum, frame):
        print("anydepth serve: stopped by SIGTERM before the server was up", file=sys.stderr)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def build_server(server_cfg: ServerConfig, model_cfg: ModelConfig, guard_cfg: GuardConfig):
    """Load the model and probes, and return a :class:`interp.serve.server.GuardServer` (not yet serving)."""
    from interp.guard.generator import GuardedGenerator
    from interp.model.loading import load_model
    from interp.probes import ProbeSet
    from interp.serve.server import make_server
    from interp.spans.derive import derive_safety_spans

    server_cfg.validate()
    guard_cfg.validate()
    check_threshold(guard_cfg.threshold, optional=True)
    if guard_cfg.mode == "lp" and not server_cfg.probes:
        raise UserError("--mode lp needs --probes (a probe set from `anydepth train`); or use --mode rk")
    loaded = load_model(model_cfg)
    spans = derive_safety_spans(loaded.tokenizer)
    probes = ProbeSet.load(server_cfg.probes) if guard_cfg.mode == "lp" else None
    generator = GuardedGenerator(loaded.model, loaded.tokenizer, spans, guard_cfg, probes,
                                 model_id=loaded.model_id, weights_sha256=loaded.weights_sha256)
    name = server_cfg.served_model_name or loaded.model_id
    try:
        return make_server(generator, loaded.tokenizer, name, server_cfg)
    except OSError as err:
        generator.close()
        raise UserError(f"cannot listen on {server_cfg.host}:{server_cfg.port}: {err}") from err


def exposure_warning(server_cfg: ServerConfig) -> str | None:
    """The warning printed when the server is reachable beyond loopback without an API key."""
    if server_cfg.host in LOOPBACK or server_cfg.keys():
        return None
    return (f"anydepth serve: WARNING: listening on {server_cfg.host} with NO API KEY: anyone who can reach "
            f"this port can use the model. Set --api-key, $ANYDEPTH_API_KEY or --api-keys-file.")


def serve(server_cfg: ServerConfig, model_cfg: ModelConfig, guard_cfg: GuardConfig, *, verbose: bool = False) -> None:
    """Serve until SIGINT / SIGTERM; answers are capped at ``server_cfg.max_tokens_limit`` tokens."""
    guard_cfg.max_new_tokens = server_cfg.max_tokens_limit
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr, format="%(message)s")
    logging.getLogger("anydepth.serve.access").setLevel(logging.INFO)
    exit_on_sigterm()
    server = build_server(server_cfg, model_cfg, guard_cfg)
    settings = {"server": server_cfg.redacted(), "guard": to_dict(guard_cfg)}
    print(f"anydepth serve: {server.service.model_name} on {server.url} (guard {guard_cfg.mode}, "
          f"{'API keys required' if server_cfg.keys() else 'no API key'}); settings {settings}", file=sys.stderr)
    warning = exposure_warning(server_cfg)
    if warning:
        print("!" * 100 + "\n" + warning + "\n" + "!" * 100, file=sys.stderr)
    try:
        server.serve_forever()  # uvicorn stops on SIGINT / SIGTERM
    finally:
        print("shutting down", file=sys.stderr)
        server.stop()
