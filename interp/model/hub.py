"""Whether the Hugging Face hub can be used now, and the one-line errors for hub ids.

With offline mode set or the hub's host not answering, models load from the local cache only
(``local_files_only``), so a missing one fails in seconds instead of after a minute of retries.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from interp import UserError
from interp.model.catalogue import known_names

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hub_unusable() -> str | None:
    """Why the hub cannot be used now (offline mode set, or its host does not answer in 3 s), else ``None``.

    Behind an HTTP(S) proxy the direct probe says nothing, so it is skipped and transformers decides."""
    for var in OFFLINE_VARS:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    if any(os.environ.get(v) for v in PROXY_VARS):
        return None
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    try:
        socket.create_connection((host, port), timeout=3.0).close()
    except OSError:
        return f"{host} is unreachable from here"
    return None


def hub_load_kwargs() -> tuple[dict, str | None]:
    """``from_pretrained`` keyword arguments for a hub id (``local_files_only`` when the hub cannot be used: a
    cached copy still loads) and the reason, for :func:`hub_error`."""
    why = hub_unusable()
    return ({"local_files_only": True}, why) if why else ({}, None)


def hub_error(hub_id: str, err: Exception, offline: str | None = None) -> UserError:
    """The one-line error for a hub id that did not load (``offline``: why the hub could not be used)."""
    if offline:
        return UserError(f"{hub_id!r} is not in the local Hugging Face cache and the hub cannot be used ({offline}); "
                         f"download it where the hub is reachable and pass the folder, or use a catalogue model "
                         f"({known_names()})")
    return UserError(f"could not load {hub_id!r} from the Hugging Face hub ({type(err).__name__}); check the id and "
                     f"network, or use a catalogue model ({known_names()})")
