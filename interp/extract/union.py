"""Several activation stores of one model read as one (:class:`StoreUnion`): rows in store order.

Stores built in pieces (a corpus and a later batch of rows, each extracted on its own) can then be probed
together. They must agree on everything that makes their activations comparable: the model's weights, template,
span, dtypes, depth grid, span positions and answer length. The union holds the hooks and layers every store
holds. Example ids must be distinct across stores (the same id twice would be one answer counted twice).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from interp import UserError
from interp.extract.h5io import read_texts
from interp.extract.store import ActivationStore, ids_sha256

__all__ = ["MATCHING_KEYS", "StoreUnion"]

# provenance keys every store of a union must share (ids, hooks, layers and study positions may differ)
MATCHING_KEYS = ("format_version", "model_id", "weights_sha256", "dtype", "template_hash", "span_ids", "probe_index",
                 "depths", "storage_dtype", "positions", "tokenizer_sha256", "n_layers", "d_model", "answer_length",
                 "end_slot")


class StoreUnion:
    """Read-only view of ``stores`` as one store (the reading half of :class:`ActivationStore`'s interface).

    ``part[i]`` is the index of the store row ``i`` came from. Closing the union closes the stores it opened.
    """

    def __init__(self, stores: Sequence[ActivationStore], *, owned: bool = False):
        if len(stores) < 2:
            raise UserError("a store union needs at least two stores")
        self.stores, self._owned = list(stores), owned
        first = self.stores[0]
        for other in self.stores[1:]:
            _check_match(first, other)
        self.hooks = [h for h in first.hooks if all(h in s.hooks for s in self.stores)]
        self.layers = [x for x in first.layers if all(x in s.layers for s in self.stores)]
        if not self.hooks or not self.layers:
            raise UserError("these stores share no " + ("hook" if not self.hooks else "layer") + ": "
                            + "; ".join(f"{s.path}: hooks {s.hooks}, layers {s.layers}" for s in self.stores))
        self.study_positions = [p for p in first.study_positions if all(p in s.study_positions for s in self.stores)]
        self.depths = first.depths
        self.storage_dtype, self.positions, self.probe_index = first.storage_dtype, first.positions, first.probe_index
        self.has_end, self.answer_length = first.has_end, first.answer_length
        sizes = [s.n_examples for s in self.stores]
        self.n_examples = int(sum(sizes))
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.part = np.repeat(np.arange(len(self.stores)), sizes)
        self.path = " + ".join(str(s.path) for s in self.stores)
        ids = [str(i) for s in self.stores for i in read_texts(s.h5["examples/id"])]  # ids alone, not every field
        _refuse_shared_ids(ids, self.part, self.stores)
        self.provenance = dict(first.provenance, hooks=self.hooks, layers=self.layers,
                               study_positions=self.study_positions, example_ids_sha256=ids_sha256(ids),
                               union_of=[{"path": str(s.path), "n_examples": s.n_examples,
                                          "example_ids_sha256": s.provenance.get("example_ids_sha256")}
                                         for s in self.stores])

    @classmethod
    def open(cls, paths: Sequence[str | Path]) -> StoreUnion:
        """The union of the stores at ``paths`` (opened read-only; closed with the union)."""
        opened: list[ActivationStore] = []
        try:
            for path in paths:
                opened.append(ActivationStore.open(path))  # a missing file is refused there, in one line
            return cls(opened, owned=True)
        except BaseException:
            for store in opened:
                store.close()
            raise

    # ---------------------------------------------------------------- metadata
    @property
    def examples(self) -> dict[str, np.ndarray]:
        """Per-example metadata of every store, concatenated (keys all stores hold; ``depth_label`` filled with
        each row's label where a store has none)."""
        parts = [s.examples for s in self.stores]
        keys = [k for k in parts[0] if all(k in p for p in parts)]
        out = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in keys}
        if self.has_depth_labels:
            out["depth_label"] = self.depth_labels
        return out

    @property
    def has_depth_labels(self) -> bool:
        return any(s.has_depth_labels for s in self.stores)

    @property
    def depth_labels(self) -> np.ndarray:
        return np.concatenate([s.depth_labels for s in self.stores])

    @property
    def done(self) -> np.ndarray:
        return np.concatenate([s.done for s in self.stores])

    @property
    def span_len(self) -> int:
        return len(self.positions)

    def select(self, label: str | int | None = None, *, done_only: bool = True) -> np.ndarray:
        """Row indices with ``label`` over the union (as :meth:`ActivationStore.select`)."""
        return np.concatenate([s.select(label, done_only=done_only) + o for s, o in zip(self.stores, self._offsets)])

    # ---------------------------------------------------------------- reading
    def read(self, hook: str, layer: int, *, position: str | int = "probe", depths: Sequence[int] | None = None,
             rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """float32 ``[N, D, d_model]`` of the selected rows, as :meth:`ActivationStore.read`."""
        return self._gather(rows, lambda s, r: s.read(hook, layer, position=position, depths=depths, rows=r))

    def read_end(self, hook: str, layer: int, *, position: str | int = "probe",
                 rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """float32 ``[N, d_model]`` at each selected answer's end slot, as :meth:`ActivationStore.read_end`."""
        return self._gather(rows, lambda s, r: s.read_end(hook, layer, position=position, rows=r))

    def _gather(self, rows, read) -> np.ndarray:
        """``read(store, local_rows)`` over the stores holding ``rows`` (indices or a mask over the union), in the
        order of ``rows``."""
        if rows is None:
            idx = np.arange(self.n_examples)
        else:
            idx = np.asarray(rows)
            idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n_examples):
            raise UserError(f"row index out of range for a union of {self.n_examples} rows")
        order = np.argsort(idx, kind="stable")
        ascending = idx[order]
        parts = self.part[ascending]
        pieces = []
        for k, store in enumerate(self.stores):
            local = ascending[parts == k] - self._offsets[k]
            if len(local):
                pieces.append(read(store, local))
        out = np.concatenate(pieces) if pieces else read(self.stores[0], np.empty(0, np.int64))
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return out[back]

    def close(self) -> None:
        if self._owned:
            for store in self.stores:
                store.close()

    def __enter__(self) -> StoreUnion:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_match(first: ActivationStore, other: ActivationStore) -> None:
    """One line naming the first provenance key two stores disagree on."""
    for key in MATCHING_KEYS:
        a, b = first.provenance.get(key), other.provenance.get(key)
        if key == "depths":
            a, b = [int(x) for x in first.depths], [int(x) for x in other.depths]
        if a != b:
            raise UserError(f"{other.path} cannot be read with {first.path}: different {key} ({_brief(b)} vs "
                            f"{_brief(a)}); extract it with the same model, template and settings")


def _refuse_shared_ids(ids: list[str], part: np.ndarray, stores: list) -> None:
    """One line naming an id two stores share (ids are unique within a store)."""
    seen: dict[str, int] = {}
    for i, key in enumerate(ids):
        if key in seen:
            raise UserError(f"example id {key!r} is in both {stores[part[seen[key]]].path} and "
                            f"{stores[part[i]].path}: one answer would count twice; drop it from one corpus")
        seen[key] = i


def _brief(value) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."
