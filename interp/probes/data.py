"""Probe-ready activations of one (hook, layer, position): ``X [N, D, d]`` plus labels, groups and masks."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from interp import UserError


@dataclass
class StoreSliceConfig:
    """Which store, hook, position, layers and depths to probe, and the grouped CV and threshold settings.

    The options ``anydepth sweep`` and ``anydepth train`` share (each adds its own).
    """

    store: str = field(default="", metadata={"help": "activation store (.h5) written by `anydepth extract`"})
    hook: str = field(default="", metadata={"help": "hook to probe (default: the store's first)"})
    position: str = field(default="probe", metadata={
        "help": "'probe', an index into the Safety-Token span, or span_mean (the mean over the span: measured only, "
                "the live guard reads the probe token)"})
    layers: list[int] | None = field(default=None, metadata={"help": "layers (default: all stored)"})
    depths: list[int] | None = field(default=None, metadata={"help": "depth values (default: all stored)"})
    folds: int = field(default=5, metadata={"help": "grouped CV folds (by prompt)"})
    seed: int = field(default=0, metadata={"help": "fold / bootstrap seed"})
    target_fpr: float = field(default=0.01, metadata={"help": "FPR on benign controls for the threshold"})
    control_sources: list[str] | None = field(default=None, metadata={
        "help": "restrict the threshold's benign answers to these sources"})
    calibrate_on: list[str] = field(default_factory=lambda: ["own", "prefill"], metadata={
        "help": "kinds of benign answers the threshold is set on and the FPR is reported on: own (the model's own "
                "answers), prefill (its answers after a forced opener), refusal, dataset (third-party text); the "
                "deployed guard sees own answers"})
    allow_partial: bool = field(default=False, metadata={
        "help": "use a store whose extraction has not finished (only its finished rows)"})

    def validate(self) -> None:
        if self.folds < 2:
            raise UserError(f"--folds must be >= 2 for cross-validation, got {self.folds}")
        if not 0 < self.target_fpr < 1:
            raise UserError(f"--target-fpr must be in (0, 1), got {self.target_fpr}")
        if self.depths is not None and any(d < 0 for d in self.depths):
            raise UserError(f"--depths are depth values >= 0, got {list(self.depths)}")

    def resolve_layers(self, store: Any) -> list[int]:
        """The layers to probe: all stored by default; a negative layer counts from the model's last layer, as in
        ``anydepth extract --layers`` (-1 = the last); each must be in the store."""
        stored = [int(x) for x in store.layers]
        if not self.layers:
            return stored
        n = (getattr(store, "provenance", None) or {}).get("n_layers")
        out = []
        for x in self.layers:
            if x < 0:
                if n is None:
                    raise UserError(f"--layers {x}: this store does not record the model's layer count; give "
                                    f"layers >= 0 (it holds {stored})")
                x += int(n)
            if x not in stored:
                raise UserError(f"layer {x} is not in the store (it holds {stored})")
            out.append(x)
        return sorted(set(out))


@dataclass
class LayerData:
    """Activations of one layer for N examples at D depths.

    ``groups`` are prompt ids (all rows of one prompt share a group, so CV keeps them together);
    ``valid[i, k]`` is False where response i ended before depth k (such pairs are never used). The activations
    are either dense, ``X [N, D, d]``, or the valid pairs alone, ``Xv [M, d]`` in row-major order
    (``load_layer(..., pairs_only=True)``: a probe never reads an invalid pair, and at paper scale the dense grid
    and a flattened copy beside it do not fit in memory).
    """

    X: np.ndarray | None  # [N, D, d] float32, or None when Xv holds the valid pairs
    y: np.ndarray  # [N] int, 1 harmful / 0 benign
    groups: np.ndarray  # [N] prompt ids (any hashable)
    valid: np.ndarray  # [N, D] bool
    sources: np.ndarray  # [N] str
    depths: np.ndarray  # [D]
    layer: int | None = None
    X_end: np.ndarray | None = None  # [N, d] each answer at its end slot (its final check), if the store has it
    Xv: np.ndarray | None = None  # [M, d] float32: the valid pairs (np.nonzero(valid) order) when X is None
    y_depth: np.ndarray | None = None  # [N, D] the label at each depth where a row changes label (insertion rows)

    def __post_init__(self) -> None:
        if self.X is None and self.Xv is None:
            raise UserError("LayerData: give the activations, dense (X) or the valid pairs (Xv)")
        if self.X is not None and self.X.ndim == 2:
            self.X = self.X[:, None, :]
        n, d_count = self.X.shape[:2] if self.X is not None else np.shape(self.valid)
        self.y = np.asarray(self.y).astype(np.int64)
        self.valid = np.asarray(self.valid, dtype=bool).reshape(n, d_count)
        self.groups = np.asarray(self.groups)
        self.sources = np.asarray(self.sources).astype(str)
        self.depths = np.asarray(self.depths)
        if not (len(self.y) == len(self.groups) == len(self.sources) == n) or len(self.depths) != d_count:
            raise UserError("LayerData: X, y, groups, sources, valid and depths disagree in shape")
        if self.X is None and len(self.Xv) != int(self.valid.sum()):
            raise UserError("LayerData: Xv must hold one row per valid pair")
        if not set(np.unique(self.y)) <= {0, 1}:
            raise UserError("labels must be 0 (benign) or 1 (harmful)")
        if self.X_end is not None and self.X_end.shape != (n, self.d_model):
            raise UserError("LayerData: X_end must be [N, d] like X's rows")
        if self.y_depth is not None:
            self.y_depth = np.asarray(self.y_depth).astype(np.int64).reshape(n, d_count)
            if not set(np.unique(self.y_depth)) <= {0, 1}:
                raise UserError("per-depth labels must be 0 (benign) or 1 (harmful)")

    @property
    def d_model(self) -> int:
        return int((self.X if self.X is not None else self.Xv).shape[-1])

    @property
    def label_grid(self) -> np.ndarray:
        """``[N, D]`` the label of every (row, depth) pair: the row's label, or its label at that depth where the
        row changes label (insertion rows: benign before the inserted span). Per-pair numbers read this; per-answer
        numbers read ``y``."""
        if self.y_depth is not None:
            return self.y_depth
        return np.broadcast_to(self.y[:, None], self.valid.shape)

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(row index, depth index) of every valid pair, row-major."""
        rows, cols = np.nonzero(self.valid)
        return rows, cols

    def flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Valid pairs flattened: ``X [M, d]``, ``y [M]`` (each pair's label), row index ``[M]``, depth index
        ``[M]`` (``Xv`` itself, no copy, when only the pairs are held)."""
        rows, cols = self.pairs()
        y = self.label_grid[rows, cols]
        if self.X is None:
            return self.Xv, y, rows, cols
        return np.ascontiguousarray(self.X[rows, cols], dtype=np.float32), y, rows, cols

    def features(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """float32 ``[m, d]`` of the given valid pairs."""
        if self.X is not None:
            return np.ascontiguousarray(self.X[rows, cols], np.float32)
        index = np.full(self.valid.shape, -1, np.int64)
        index[self.valid] = np.arange(len(self.Xv))
        at = index[rows, cols]
        if (at < 0).any():
            raise UserError("LayerData: asked for a pair that is not valid (its activations were not read)")
        return self.Xv if len(at) == len(self.Xv) and np.array_equal(at, np.arange(len(at))) else self.Xv[at]

    def column(self, k: int) -> np.ndarray:
        """``[N, 1, d]`` float32 at depth index ``k`` (zeros where a row is not valid there, when only the pairs
        are held)."""
        if self.X is not None:
            return np.ascontiguousarray(self.X[:, k:k + 1], np.float32)
        out = np.zeros((len(self.y), 1, self.d_model), np.float32)
        ok = self.valid[:, k]
        out[ok, 0] = self.features(np.nonzero(ok)[0], np.full(int(ok.sum()), k))
        return out

    def subset(self, m: np.ndarray) -> LayerData:
        """The rows of mask ``m`` (a copy of their activations)."""
        common = dict(y=self.y[m], groups=self.groups[m], valid=self.valid[m], sources=self.sources[m],
                      depths=self.depths, layer=self.layer, X_end=None if self.X_end is None else self.X_end[m],
                      y_depth=None if self.y_depth is None else self.y_depth[m])
        if self.X is not None:
            return LayerData(X=self.X[m], **common)
        rows, _ = self.pairs()
        return LayerData(X=None, Xv=self.Xv[np.asarray(m, bool)[rows]], **common)

    def restrict(self, valid: np.ndarray) -> LayerData:
        """Only the pairs valid here and in ``valid`` (itself when that drops none)."""
        keep = self.valid & valid
        if np.array_equal(keep, self.valid):
            return self
        if self.X is not None:
            return replace(self, valid=keep)
        return replace(self, valid=keep, Xv=self.Xv[keep[self.valid]])

    def labels_only(self) -> LayerData:
        """The same rows, depths and labels without activations (``d`` = 0): what a sweep keeps across layers."""
        return replace(self, X=None, Xv=np.empty((int(self.valid.sum()), 0), np.float32), X_end=None)


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_attr(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def examples_meta(store: Any) -> dict[str, np.ndarray]:
    """Labels, prompt groups, sources, validity and text of a store's examples (strings decoded); ``y`` is each
    answer's label, ``y_depth [N, D]`` (only for a store with insertion rows) the label at each depth.

    ``groups`` is the split unit: the content group (:func:`interp.probes.groups.content_groups`: the same
    prompt, a shared twin pair id or a near duplicate, transitively), or the example id when the store records
    no prompts.
    """
    from interp.probes.groups import content_groups

    ex = store.examples
    n = int(store.n_examples)
    done = np.asarray(ex["done"], dtype=bool) if "done" in ex else np.ones(n, bool)
    prompts = ex.get("prompt")
    pairs = ex.get("pair_id")
    pair_list = [_attr(q) for q in pairs] if pairs is not None else [""] * n
    if prompts is not None and all(len(str(p)) for p in prompts):
        groups = content_groups([_attr(p) for p in prompts], pair_list)
    else:
        groups = [f"id:{_attr(i)}" for i in ex["id"]]
    out = {
        "y": np.asarray(ex["label"]).astype(np.int64),
        "groups": np.array(groups),
        "sources": np.array([_attr(s) for s in np.asarray(ex["source"])]).astype(str),
        "valid": np.asarray(ex["valid"], dtype=bool) & done[:, None],
        **({"y_depth": np.asarray(ex["depth_label"]).astype(np.int64)} if "depth_label" in ex else {}),
        "done": done,
        "prompts": np.array([_attr(p) for p in np.asarray(prompts)] if prompts is not None else [""] * n),
        "n_tokens": np.asarray(ex.get("n_response_tokens", np.zeros(n)), np.int64),
        "pair_ids": np.array(pair_list, dtype=object),
    }
    from interp.probes.answers import row_kinds

    out["kinds"] = row_kinds(out["sources"], [_attr(k) for k in ex["kind"]] if "kind" in ex else None)
    for key in ("end_depth", "end_chars"):
        if key in ex:
            out[key] = np.asarray(ex[key], np.int64)
    if "finished" in ex:
        out["finished"] = np.asarray(ex["finished"], bool)
    if "response" in ex and "response_chars" in ex:
        out["response"] = np.array([_attr(r) for r in np.asarray(ex["response"])], dtype=object)
        out["response_chars"] = np.asarray(ex["response_chars"], np.int64)
    return out


def finished_meta(store: Any) -> dict[str, np.ndarray]:
    """:func:`examples_meta` of the finished rows only (the rows :func:`load_layer` reads, in its order)."""
    meta = examples_meta(store)
    n = len(meta["done"])
    return {k: (v[meta["done"]] if isinstance(v, np.ndarray) and len(v) == n else v) for k, v in meta.items()}


def depth_columns(store: Any, depths: np.ndarray | list[int] | None, name: str = "depths") -> np.ndarray:
    """The store's columns of the depth values ``depths`` (all columns for None); a depth the store lacks is a
    one-line error naming ``name`` (the option the depths came from, e.g. ``--depths``)."""
    all_depths = np.asarray(store.depths)
    if depths is None:
        return np.arange(len(all_depths))
    missing = sorted(set(int(v) for v in depths) - set(int(v) for v in all_depths))
    if missing:
        raise UserError(f"{name} {missing} not in the store (it holds {[int(d) for d in all_depths]})")
    return np.array([int(np.nonzero(all_depths == v)[0][0]) for v in depths], dtype=int)


def load_layer(store: Any, hook: str, layer: int, position: str | int = "probe",
               depths: np.ndarray | list[int] | None = None, *, pairs_only: bool = False,
               chunk_rows: int = 512, select: np.ndarray | None = None) -> LayerData:
    """Read one (hook, layer, position) of an ``ActivationStore`` as :class:`LayerData`.

    Only finished rows (``done``) are kept; ``depths`` selects depth values (not indices). With ``pairs_only`` the
    valid pairs are read straight into one ``[M, d]`` float32 buffer, ``chunk_rows`` rows at a time (the dense
    ``[N, D, d]`` grid is never built); the ``prompt`` position (one row per example) is always read dense.
    ``select`` (bool over the finished rows) reads only those rows: equal to ``.subset(select)`` of the whole
    layer, without holding the whole layer.
    """
    all_depths = np.asarray(store.depths)
    meta = examples_meta(store)
    cols = depth_columns(store, depths)
    rows = np.nonzero(meta["done"])[0]
    if len(rows) == 0:
        raise UserError("the store has no finished rows yet")
    if select is not None:  # a subset of the finished rows, read alone (a split role, without the whole layer)
        if len(select) != len(rows):
            raise UserError(f"load_layer: select has {len(select)} entries for {len(rows)} finished rows")
        rows = rows[np.asarray(select, bool)]
    every = len(rows) == len(meta["done"])
    valid = meta["valid"][rows][:, cols]
    if pairs_only and position != "prompt":
        X, Xv = None, _read_pairs(store, hook, layer, position, all_depths[cols].tolist(), rows, valid, chunk_rows)
    else:
        Xv = None
        X = np.asarray(store.read(hook, int(layer), position=position, depths=all_depths[cols].tolist(),
                                  rows=None if every else rows), dtype=np.float32)
        if X.ndim == 2:
            X = np.broadcast_to(X[:, None, :], (len(rows), len(cols), X.shape[-1]))
        _check_finite(store, hook, layer, ~np.isfinite(X).all(axis=-1) & valid, rows)
    X_end = None
    if getattr(store, "has_end", False):
        X_end = np.asarray(store.read_end(hook, int(layer), position=position, rows=None if every else rows),
                           np.float32)
        if not np.isfinite(X_end).all():
            raise UserError(f"{getattr(store, 'path', 'store')}: {hook} layer {layer} holds non-finite activations at "
                            "an answer's end; the file is damaged: re-extract it")
    y_depth = meta["y_depth"][rows][:, cols] if "y_depth" in meta else None
    return LayerData(X=X, y=meta["y"][rows], groups=meta["groups"][rows], valid=valid, sources=meta["sources"][rows],
                     depths=all_depths[cols], layer=int(layer), X_end=X_end, Xv=Xv, y_depth=y_depth)


def _read_pairs(store: Any, hook: str, layer: int, position: str | int, depths: list[int], rows: np.ndarray,
                valid: np.ndarray, chunk_rows: int) -> np.ndarray:
    """The valid pairs of ``rows`` as one float32 ``[M, d]`` buffer, read ``chunk_rows`` rows at a time."""
    out = None
    at = 0
    for start in range(0, len(rows), chunk_rows):
        part = slice(start, start + chunk_rows)
        x = np.asarray(store.read(hook, int(layer), position=position, depths=depths, rows=rows[part]), np.float32)
        ok = valid[part]
        _check_finite(store, hook, layer, ~np.isfinite(x).all(axis=-1) & ok, rows[part])
        if out is None:
            out = np.empty((int(valid.sum()), x.shape[-1]), np.float32)
        n = int(ok.sum())
        out[at:at + n] = x[ok]
        at += n
    return out


def _check_finite(store: Any, hook: str, layer: int, bad: np.ndarray, rows: np.ndarray) -> None:
    if bad.any():
        r = np.nonzero(bad.any(axis=1))[0]
        raise UserError(f"{getattr(store, 'path', 'store')}: {hook} layer {layer} holds non-finite activations in "
                        f"{len(r)} row(s) (first: row {int(rows[r[0]])}); "
                        "the file is damaged or was written with an overflowing dtype: re-extract it")


def require_finished(store: Any, allow_partial: bool) -> None:
    """Refuse a store whose extraction has unfinished rows unless ``allow_partial`` (then warn with the count)."""
    import warnings

    done = store.done
    left = int((~done).sum())
    if not left:
        return
    msg = (f"{store.path}: {left} of {len(done)} rows are not extracted yet (an interrupted `anydepth extract`; "
           "rerun it to finish)")
    if not allow_partial:
        raise UserError(msg + ", or pass --allow-partial true to use the finished rows only")
    warnings.warn(msg + f"; using the {len(done) - left} finished rows (--allow-partial)", stacklevel=2)
