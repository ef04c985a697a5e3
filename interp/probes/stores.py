"""Opening a store for probing and reading what the probes need beside the activations (texts, answers)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from interp import UserError
from interp.extract.store import ActivationStore
from interp.probes.answers import Deployed
from interp.probes.data import depth_columns, examples_meta
from interp.probes.loso import AnswerInfo
from interp.probes.ngram import depth_texts

__all__ = ["check_depths", "open_store", "position_arg", "store_answers", "store_texts", "using_store",
           "with_added"]


def open_store(path: str | Path | ActivationStore) -> ActivationStore:
    """An open store (read-only): ``path`` opened, or ``path`` itself when it is one already."""
    if isinstance(path, ActivationStore):
        return path
    if not path:
        raise UserError("give --store PATH (an activation store from `anydepth extract`)")
    if not Path(path).exists():
        raise UserError(f"no store at {path}")
    return ActivationStore.open(path)


@contextmanager
def using_store(store: str | Path | ActivationStore) -> Iterator[ActivationStore]:
    """The store open for a ``with`` block: opened (and closed after) when given as a path, as is otherwise."""
    opened = open_store(store)
    try:
        yield opened
    finally:
        if opened is not store:
            opened.close()


@contextmanager
def with_added(store: ActivationStore, added: list) -> Iterator[tuple]:
    """``(store, None)`` when nothing is ``added``; else the union of ``store`` and the stores at ``added`` paths
    (:class:`~interp.extract.union.StoreUnion`) with a mask of the added rows."""
    if not added:
        yield store, None
        return
    from contextlib import ExitStack

    from interp.extract.union import StoreUnion

    with ExitStack() as stack:  # a store that fails to open closes those opened before it
        opened = [stack.enter_context(using_store(path)) for path in added]
        union = StoreUnion([store, *opened])
        yield union, union.part > 0


def position_arg(text: str | int) -> str | int:
    """``"probe"`` / ``"span"`` as given, an index into the span as an int."""
    return int(text) if str(text).lstrip("-").isdigit() else text


def check_depths(store, depths) -> None:
    """``depths`` the store lacks: one line naming them and what it holds."""
    if depths:
        depth_columns(store, depths, name="--depths")


def store_texts(store, depths=None, meta: dict | None = None):
    """``[N_done, D]`` texts the probe has seen at each selected depth, or None for a store without text."""
    meta = examples_meta(store) if meta is None else meta
    if "response_chars" not in meta:
        return None
    cols = depth_columns(store, depths or None)
    done = meta["done"]
    return depth_texts(meta["prompts"][done], meta["response"][done], meta["response_chars"][done][:, cols])


def store_answers(store, meta: dict | None = None) -> AnswerInfo:
    """:class:`interp.probes.loso.AnswerInfo` of a store's finished rows (each answer as deployed at the store's
    answer length, its kind, the text at its end)."""
    meta = examples_meta(store) if meta is None else meta
    done = meta["done"]
    rows = {k: v[done] for k, v in meta.items() if hasattr(v, "__len__") and len(v) == len(done)}
    end_texts = None
    if "end_chars" in meta and "response" in meta:
        end_texts = depth_texts(rows["prompts"], rows["response"], rows["end_chars"])
    return AnswerInfo(Deployed.of(rows, getattr(store, "answer_length", None)), rows["kinds"], end_texts)
