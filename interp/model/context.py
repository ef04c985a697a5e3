"""One rule for inputs longer than the model context, shared by ``generate`` and ``extract`` (``--too-long``).

``truncate`` keeps what fits (with a warning) and fails only when nothing can fit; ``skip`` drops the example
(the caller records which); ``error`` stops with a one-line message.
"""

from __future__ import annotations

import warnings

from interp import UserError

TOO_LONG = ("truncate", "skip", "error")


def text_config(model):
    """The config of a model's language part (multimodal wrappers nest it; plain LMs are their own)."""
    return model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config


def context_limit(model) -> int | None:
    """The model's position limit (``max_position_embeddings`` of its text config), or None when it has none."""
    return getattr(text_config(model), "max_position_embeddings", None)


def fit(example_id: str, n_fixed: int, n_wanted: int, max_context: int | None, too_long: str,
        what: str = "response tokens") -> int | None:
    """How many of ``n_wanted`` tokens fit after ``n_fixed`` fixed ones (prompt, forced opener, span) in
    ``max_context``: ``n_wanted`` when all fit; fewer under ``truncate``; None under ``skip``."""
    if too_long not in TOO_LONG:
        raise UserError(f"--too-long must be one of {', '.join(TOO_LONG)}, got {too_long!r}")
    if max_context is None or n_fixed + n_wanted <= max_context:
        return n_wanted
    room = max_context - n_fixed
    if too_long == "skip":
        return None
    if too_long == "error":
        raise UserError(f"example {example_id!r}: {n_fixed} fixed + {n_wanted} {what} exceed the model context "
                        f"({max_context} tokens); use --too-long truncate or --too-long skip")
    if room < 0:
        raise UserError(f"example {example_id!r}: its prompt alone ({n_fixed} tokens with the span) exceeds the "
                        f"model context ({max_context}); truncating the rest cannot help: use --too-long skip")
    warnings.warn(f"example {example_id!r}: {what} cut from {n_wanted} to {room} to fit the model context "
                  f"({max_context})", stacklevel=3)
    return room
