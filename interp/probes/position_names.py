"""The names of the read positions ``anydepth positions`` compares, their labels and where a store holds them."""

from __future__ import annotations

HEADER = "header"
NGRAM = "ngram"  # the text baseline's row
LABELS = {"header": "header (probe token)", "header_mean": "header mean", "last_token": "last generated token",
          "prompt": "last template token of the prompt", "t_inst": "last instruction token",
          "response_mean": "mean over the response", "user_header": "user header (injected)",
          "newlines": "newline run (injected)", "random": "random tokens (injected)", NGRAM: "n-gram text classifier"}


def position_names(store) -> list[str]:
    """Every position ``store`` can be read at, the header's probe token first."""
    names = [HEADER]
    span_len = len((store.provenance or {}).get("span_ids") or store.positions)
    names += [f"header[{k}]" for k in store.positions if k != store.probe_index]
    if len(store.positions) == span_len and span_len > 1:
        names.append("header_mean")
    names += ["last_token", "prompt", *store.study_positions]
    return names


def store_position(name: str) -> str | int:
    """The :meth:`ActivationStore.read` position of a position name."""
    if name == HEADER:
        return "probe"
    if name == "header_mean":
        return "span_mean"
    if name.startswith("header[") and name.endswith("]"):
        return int(name[len("header["):-1])
    return name


def is_control(name: str) -> bool:
    """A position the verdict tests the header against (not the header itself, nor a part of it)."""
    return not name.startswith(HEADER)
