"""HDF5 activation store: one file per (model, dataset, config), readable with plain h5py.

Layout::

    /examples/{id, label, source, kind, prompt, category, pair_id, n_response_tokens, valid[N,D], done[N]}
    /examples/depth_label[N,D]  (only when a row changes label with depth: insertion rows)
    /examples/{response, response_chars[N,D]}   response text; characters of it the probe has seen at depth d
    /examples/{end_depth, end_chars, finished}   each answer's final check depth (see below), whether it ended
    /depths[D]
    /acts/<hook>/layer_<L>                     [N, D+1, n_pos, d_model]   Safety-Token positions
    /baselines/last_token/<hook>/layer_<L>     [N, D+1, d_model]          last response token before depth d
    /baselines/prompt/<hook>/layer_<L>         [N, d_model]               last prompt token
    /positions/<name>/<hook>/layer_<L>         [N, D+1, d_model]          the position study's reads (optional):
                                                                          control spans, response_mean; t_inst [N, d]

The depth axis of the activation datasets holds the D shared depths and one more slot, the **end** of each
answer: the span injected after ``end_depth`` tokens, where ``end_depth = min(answer length, answer_length)``
(the store attribute ``answer_length``: the deployed guard's ``max_new_tokens``). That is where the guard's
final check runs on the answer, so with a depth grid that holds every stride multiple the store holds every
check the guard makes (:meth:`ActivationStore.read` returns the D shared depths, :meth:`ActivationStore.read_end`
the end slot). Stores of format 1 have no end slot.

``<hook>`` is a TransformerLens hook suffix (``hook_resid_pre``, ``hook_resid_post``, ``ln1.hook_normalized``;
full name ``blocks.<L>.<hook>``). Every activation dataset is one layer, stored contiguously and allocated when
the file is created, so reading one layer reads only that layer's bytes, and writing a batch changes raw data
only (never HDF5 metadata): a writer killed at any moment leaves a readable file whose ``done`` rows are
complete (``done`` is set after the batch's data is flushed). Storage dtype float32, float16, or bfloat16 kept as
uint16 (attribute ``storage_dtype`` on every dataset and the root). Text is stored as UTF-8 strings; HDF5 strings
cannot hold NUL, so a text dataset where any value contains one is stored escaped (a backslash doubled, NUL as a
backslash and a zero; attribute ``escaped``), and read back exactly.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from interp import UserError
from interp.extract.h5io import (
    create_preallocated,
    decode_attr,
    disk_dtype,
    encode_attr,
    from_storage,
    read_texts,
    slot_index,
    take_rows,
    to_storage,
    write_texts,
)

FORMAT_VERSION = 2  # 2: the end slot (final checks), kind, finished, escaped text
HOOK_ALIASES = {"resid_pre": "hook_resid_pre", "resid_post": "hook_resid_post", "ln1": "ln1.hook_normalized",
                "hook_resid_pre": "hook_resid_pre", "hook_resid_post": "hook_resid_post",
                "ln1.hook_normalized": "ln1.hook_normalized"}
STORAGE_DTYPES = ("float32", "float16", "bfloat16")
# provenance keys that must match to append to an existing store
IDENTITY_KEYS = ("format_version", "model_id", "weights_sha256", "dtype", "template_hash", "span_ids",
                 "probe_index", "hooks", "layers", "depths", "storage_dtype", "positions", "example_ids_sha256",
                 "token_ids_sha256", "tokenizer_sha256", "n_layers", "d_model", "answer_length", "end_slot",
                 "study_positions", "controls")
PROMPT_READS = ("prompt", "t_inst")  # one vector per row, broadcast over depths
TEXT_KEYS = ("id", "source", "kind", "prompt", "category", "pair_id", "response")
def canonical_hook(name: str) -> str:
    """``resid_post`` / ``hook_resid_post`` / ``blocks.3.hook_resid_post`` → ``hook_resid_post``."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[0] == "blocks" and parts[1].isdigit():
        name = ".".join(parts[2:])
    if name not in HOOK_ALIASES:
        raise UserError(f"unknown hook {name!r}; use resid_pre, resid_post or ln1")
    return HOOK_ALIASES[name]


def tl_name(hook: str, layer: int) -> str:
    """TransformerLens hook name, e.g. ``blocks.3.hook_resid_post``."""
    return f"blocks.{layer}.{canonical_hook(hook)}"


def _open_h5(path: Path, mode: str) -> h5py.File:
    try:
        return h5py.File(path, mode)
    except FileNotFoundError as err:
        raise UserError(f"no activation store at {path}") from err
    except OSError as err:  # not HDF5, truncated, or locked by a live writer
        msg = str(err).lower()  # "truncated file: ... sblock->base_addr" must not read as a lock
        if "unable to lock" in msg or "resource temporarily unavailable" in msg:
            raise UserError(f"{path} is in use by another process (an extraction still writing it?); wait for it "
                            "to finish or stop it") from err
        raise UserError(f"{path} is not a readable activation store (corrupt or truncated?): {err}") from err


class ActivationStore:
    """Reader/writer over one store file. Open with :meth:`open` or :meth:`create`."""

    def __init__(self, path: Path, h5: h5py.File):
        self.path, self.h5 = path, h5
        try:
            self.provenance: dict = {k: decode_attr(v) for k, v in h5.attrs.items()}
            self.depths: np.ndarray = h5["depths"][()]
            self.hooks: list[str] = list(self.provenance["hooks"])
            self.layers: list[int] = [int(x) for x in self.provenance["layers"]]
            self.storage_dtype: str = self.provenance["storage_dtype"]
            self.positions: list[int] = [int(x) for x in self.provenance["positions"]]
            self.probe_index: int = int(self.provenance["probe_index"])
            self.study_positions: list[str] = list(self.provenance.get("study_positions") or [])
            self.has_end: bool = bool(self.provenance.get("end_slot", False))
            self.answer_length: int | None = self.provenance.get("answer_length")
            ex = h5["examples"]
            self.n_examples: int = int(ex["done"].shape[0])
            self._ids = ex["id"]
        except (KeyError, OSError, ValueError) as err:
            h5.close()
            raise UserError(f"{path} is not an anydepth activation store (missing {err})") from err

    # ---------------------------------------------------------------- opening
    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> ActivationStore:
        """Open an existing store (``mode`` "r" or "r+")."""
        path = Path(path)
        return cls(path, _open_h5(path, mode))

    @classmethod
    def create(cls, path: str | Path, provenance: dict, examples: dict[str, Sequence], *, depths: Sequence[int],
               hooks: Sequence[str], layers: Sequence[int], positions: Sequence[int], d_model: int,
               storage_dtype: str = "float16") -> ActivationStore:
        """Create a store (atomically: built under a temporary name, then renamed), or reopen a matching one.

        ``examples`` holds ``id, label`` (1 harmful / 0 benign), ``source, prompt, category, n_response_tokens``
        and ``valid`` [N, D]; with ``end_depth`` [N] (and optionally ``end_chars``, ``finished``, ``kind``) the
        activation datasets get the end slot (the final check of each answer). Reopening an existing file refuses
        any change of model, template, span, hooks, layers, depths, positions, storage dtype, answer length or
        example list (:class:`UserError`).
        """
        path = Path(path)
        if storage_dtype not in STORAGE_DTYPES:
            raise UserError(f"storage dtype must be one of {STORAGE_DTYPES}, got {storage_dtype!r}")
        hooks = [canonical_hook(h) for h in hooks]
        ids = [str(i) for i in examples["id"]]
        if len(set(ids)) != len(ids):
            raise UserError("example ids are not unique")
        prov = dict(provenance)
        has_end = "end_depth" in examples
        prov.setdefault("answer_length", None)
        prov.update(format_version=FORMAT_VERSION, end_slot=has_end, hooks=hooks, layers=[int(x) for x in layers],
                    depths=[int(d) for d in depths], storage_dtype=storage_dtype,
                    positions=[int(p) for p in positions], example_ids_sha256=ids_sha256(ids))
        if path.exists():
            store = cls.open(path, "r+")
            store._check_identity(prov)
            return store
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        N, D = len(ids), len(depths)
        slots = D + int(has_end)
        with h5py.File(tmp, "w") as f:
            for key, value in prov.items():
                f.attrs[key] = encode_attr(value)
            f.create_dataset("depths", data=np.asarray(depths, dtype=np.int64))
            ex = f.create_group("examples")
            for key in TEXT_KEYS:
                if key in examples or key in ("id", "source", "prompt", "category"):
                    write_texts(ex, key, examples.get(key, [""] * N))
            if "response_chars" in examples:
                ex.create_dataset("response_chars", data=np.asarray(examples["response_chars"], np.int32).reshape(N, D))
            if has_end:
                ex.create_dataset("end_depth", data=np.asarray(examples["end_depth"], np.int64).reshape(N))
                ex.create_dataset("finished", data=np.asarray(examples.get("finished", [True] * N), bool).reshape(N))
                if "end_chars" in examples:
                    ex.create_dataset("end_chars", data=np.asarray(examples["end_chars"], np.int32).reshape(N))
            ex.create_dataset("label", data=np.asarray(examples["label"], dtype=np.int8))
            if "depth_label" in examples:  # insertion rows: the label at each depth (benign before the span)
                ex.create_dataset("depth_label", data=np.asarray(examples["depth_label"], np.int8).reshape(N, D))
            ex.create_dataset("n_response_tokens", data=np.asarray(examples["n_response_tokens"], np.int64))
            ex.create_dataset("valid", data=np.asarray(examples["valid"], dtype=bool).reshape(N, D))
            create_preallocated(ex, "done", (N,), bool)[...] = False
            disk = disk_dtype(storage_dtype)
            for hook in hooks:
                study = [(f"positions/{name}/{hook}", (N, d_model) if name in PROMPT_READS else (N, slots, d_model))
                         for name in prov.get("study_positions") or []]
                for layer in layers:
                    for group, shape in ((f"acts/{hook}", (N, slots, len(positions), d_model)),
                                         (f"baselines/last_token/{hook}", (N, slots, d_model)),
                                         (f"baselines/prompt/{hook}", (N, d_model)), *study):
                        ds = create_preallocated(f.require_group(group), f"layer_{layer}", shape, disk)
                        ds.attrs["storage_dtype"] = storage_dtype
                        ds.attrs["hook_name"] = tl_name(hook, layer)
        os.replace(tmp, path)
        return cls.open(path, "r+")

    def _check_identity(self, prov: dict) -> None:
        for key in IDENTITY_KEYS:
            old, new = self.provenance.get(key), decode_attr(encode_attr(prov.get(key)))
            if old != new:
                self.close()
                raise UserError(f"{self.path} was written with a different {key} ({_short(old)} vs {_short(new)}); "
                                "use another --out path or delete the old store")

    # ---------------------------------------------------------------- metadata
    @property
    def examples(self) -> dict[str, np.ndarray]:
        """Per-example metadata as numpy arrays (strings as ``str`` objects)."""
        ex = self.h5["examples"]
        out = {k: read_texts(ex[k]) for k in TEXT_KEYS if k in ex}
        for k in ("response_chars", "end_depth", "end_chars", "finished", "depth_label"):
            if k in ex:
                out[k] = ex[k][()]
        out.update(label=ex["label"][()], n_response_tokens=ex["n_response_tokens"][()],
                   valid=ex["valid"][()].astype(bool), done=ex["done"][()].astype(bool))
        return out

    @property
    def has_depth_labels(self) -> bool:
        """Whether some row changes label with depth (``/examples/depth_label``: insertion rows)."""
        return "depth_label" in self.h5["examples"]

    @property
    def depth_labels(self) -> np.ndarray:
        """``[N, D]`` int8: each row's label at each depth (the row's label everywhere unless it was inserted into)."""
        ex = self.h5["examples"]
        if "depth_label" in ex:
            return ex["depth_label"][()].astype(np.int8)
        return np.repeat(ex["label"][()].astype(np.int8)[:, None], len(self.depths), axis=1)

    @property
    def done(self) -> np.ndarray:
        return self.h5["examples/done"][()].astype(bool)

    @property
    def span_len(self) -> int:
        return len(self.positions)

    def close(self) -> None:
        if not self.h5.id.valid:
            return
        try:
            self.h5.close()
        except RuntimeError:
            if not getattr(self, "_write_failed", False):
                raise  # after a failed write HDF5 cannot flush its caches; the rows marked done are on disk

    def __enter__(self) -> ActivationStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- reading
    def _dataset(self, group: str, hook: str, layer: int) -> h5py.Dataset:
        hook = canonical_hook(hook)
        if hook not in self.hooks:
            raise UserError(f"hook {hook!r} not in this store (has {self.hooks})")
        if int(layer) not in self.layers:
            raise UserError(f"layer {layer} not in this store (has {self.layers})")
        return self.h5[f"{group}/{hook}/layer_{int(layer)}"]

    def _depth_index(self, depths: Sequence[int] | None) -> np.ndarray:
        if depths is None:
            return np.arange(len(self.depths))
        lookup = {int(d): i for i, d in enumerate(self.depths)}
        missing = [d for d in depths if int(d) not in lookup]
        if missing:
            raise UserError(f"depths {missing} not in this store (has {self.depths.tolist()})")
        return np.asarray([lookup[int(d)] for d in depths])

    def read(self, hook: str, layer: int, *, position: str | int = "probe", depths: Sequence[int] | None = None,
             rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """float32 ``[N, D, d_model]`` for one hook and layer, reading only that layer's bytes.

        ``position``: ``"probe"`` (the role token), an int index into the Safety-Token span, ``"span_mean"`` (the
        mean over every span token), ``"last_token"``
        (last response token before each depth) or ``"prompt"`` (last prompt token, broadcast over depths), and in
        a store extracted with ``--controls`` any of :attr:`study_positions` (``t_inst`` broadcast like ``prompt``).
        ``rows`` selects examples (indices or a boolean mask, e.g. from :meth:`select`); ``depths`` selects
        depth values.
        Invalid (depth, row) cells hold unspecified values: mask them with ``examples["valid"]``.
        """
        d_idx = self._depth_index(depths)
        row_idx = self._rows(rows)
        if position in PROMPT_READS:
            x = self._dataset("baselines/prompt" if position == "prompt" else self._study_group(position), hook, layer)
            data = take_rows(x, row_idx)
            return np.repeat(from_storage(data, self.storage_dtype)[:, None, :], len(d_idx), axis=1)
        return self._slots(hook, layer, position, d_idx, row_idx)

    def read_end(self, hook: str, layer: int, *, position: str | int = "probe",
                 rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """float32 ``[N, d_model]`` at each answer's end slot (the span after ``examples["end_depth"]`` tokens: the
        guard's final check); ``position`` as in :meth:`read`."""
        if not self.has_end:
            raise UserError(f"{self.path} holds no final checks (written before format 2, or without end depths); "
                            "re-extract it with `anydepth extract` of this version")
        row_idx = self._rows(rows)
        if position in PROMPT_READS:
            return self.read(hook, layer, position=position, depths=[int(self.depths[0])], rows=rows)[:, 0]
        return self._slots(hook, layer, position, np.array([len(self.depths)]), row_idx)[:, 0]

    def _study_group(self, position: str) -> str:
        if position not in self.study_positions:
            raise UserError(f"position {position!r} is not in {self.path} (its study positions: "
                            f"{self.study_positions or 'none'}); re-extract with --controls true")
        return f"positions/{position}"

    def _slots(self, hook: str, layer: int, position: str | int, slots: np.ndarray, row_idx) -> np.ndarray:
        if isinstance(position, str) and position not in ("probe", "span_mean") and not position.lstrip("-").isdigit():
            group = "baselines/last_token" if position == "last_token" else self._study_group(position)
            x = self._dataset(group, hook, layer)
            return from_storage(take_rows(x, row_idx, slot_index(slots)), self.storage_dtype)
        if position == "span_mean":  # every span token's state, averaged (a readout the live guard does not make)
            n_span = len((self.provenance or {}).get("span_ids") or self.positions)
            if len(self.positions) < n_span:
                raise UserError(f"the span mean needs every span position stored (this store holds {self.positions} "
                                f"of {n_span}); re-extract with --positions span")
            return np.mean([self._slots(hook, layer, p, slots, row_idx) for p in self.positions], axis=0)
        span_pos = self.probe_index if position == "probe" else int(position)
        if span_pos not in self.positions:
            raise UserError(f"span position {span_pos} not stored (stored span positions: {self.positions})")
        x = self._dataset("acts", hook, layer)
        p = self.positions.index(span_pos)
        return from_storage(take_rows(x, row_idx, slot_index(slots), p), self.storage_dtype)

    def select(self, label: str | int | None = None, *, done_only: bool = True) -> np.ndarray:
        """Row indices with ``label`` (``"harmful"``/1, ``"benign"``/0, None = any), finished rows only by default."""
        ex = self.h5["examples"]
        keep = ex["done"][()].astype(bool) if done_only else np.ones(self.n_examples, dtype=bool)
        if label is not None:
            value = {"harmful": 1, "benign": 0}.get(label, label) if isinstance(label, str) else label
            if value not in (0, 1):
                raise UserError(f"label must be harmful/1 or benign/0, got {label!r}")
            keep &= ex["label"][()] == value
        return np.flatnonzero(keep)

    def _rows(self, rows) -> np.ndarray | None:
        if rows is None:
            return None
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return rows.astype(np.int64)

    # ---------------------------------------------------------------- writing
    def write_rows(self, rows: Sequence[int], acts: dict[tuple[str, int], np.ndarray],
                   last_token: dict[tuple[str, int], np.ndarray], prompt: dict[tuple[str, int], np.ndarray],
                   study: dict[str, dict[tuple[str, int], np.ndarray]] | None = None) -> None:
        """Write one batch (float32 arrays keyed by (hook, layer); ``acts``/``last_token`` hold every depth slot, the
        end slot last when the store has one; ``study`` the position study's reads by name), flush, then mark the
        rows done."""
        study = study or {}
        if sorted(study) != sorted(self.study_positions):
            raise UserError(f"this batch holds study positions {sorted(study)}, the store {sorted(self.study_positions)}")
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows)
        sorted_rows = rows[order]
        try:
            converted = []  # every array is checked before any is written: a bad batch writes nothing
            groups = [("acts", acts), ("baselines/last_token", last_token), ("baselines/prompt", prompt),
                      *((f"positions/{name}", study[name]) for name in self.study_positions)]
            for group, arrays in groups:
                for (hook, layer), value in arrays.items():
                    value = value[order]
                    if not np.isfinite(value).all():
                        raise UserError(f"{hook} layer {layer}: the model produced NaN/inf activations (rows "
                                        f"{sorted_rows[:4].tolist()}…); check the model's dtype (--dtype float32)")
                    stored = to_storage(value, self.storage_dtype)
                    if self.storage_dtype == "float16" and not np.isfinite(stored).all():
                        raise UserError(f"{hook} layer {layer}: activations up to {float(np.abs(value).max()):.4g} "
                                        f"overflow float16 (largest 65504); nothing of this batch was written to "
                                        f"{self.path}: extract into a new file with --store-dtype bfloat16 (or "
                                        "float32)")
                    converted.append((group, hook, layer, stored))
            self._require_room(sum(stored.nbytes for *_, stored in converted))
            written = []
            for group, hook, layer, stored in converted:
                ds = self._dataset(group, hook, layer)
                ds[sorted_rows] = stored
                written.append(ds)
            for ds in written:  # each dataset's chunk cache to the file now: a failed write raises here, before any
                ds.flush()      # row is marked done (closing the dataset later would only log it)
            self.h5.flush()
            done = self.h5["examples/done"]
            done[sorted_rows] = True
            self.h5.flush()
        except (OSError, RuntimeError) as err:  # h5py reports a failed write as RuntimeError(... errno = 28 ...)
            if getattr(err, "errno", None) == errno.ENOSPC or "No space" in str(err) or "errno = 28" in str(err):
                self._write_failed = True
                raise UserError(f"disk full while writing {self.path}; rows marked done are complete, "
                                "free space and rerun the same command to resume") from err
            raise

    def _require_room(self, nbytes: int, slack: int = 4 << 20) -> None:
        """Refuse a batch the disk has no room for before writing any of it: HDF5 cannot take back a write that
        failed half-way (the file's caches stay dirty), so the store is kept as the last complete batch left it."""
        free = shutil.disk_usage(self.path.parent).free
        if free < 2 * nbytes + slack:
            raise UserError(f"disk full: {free / 2**20:.1f} MiB free where {self.path} is written, and a batch needs "
                            f"about {nbytes / 2**20:.1f} MiB; rows marked done are complete, free space and rerun the "
                            "same command to resume")


def ids_sha256(ids: Sequence[str]) -> str:
    """The example-id digest a store's resume identity and a shard manifest both record."""
    import hashlib

    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."
