"""The activation store's HDF5 encodings: text datasets (escaped when a value holds NUL), storage dtypes
(bfloat16 kept as uint16), JSON attributes, preallocated contiguous datasets, and row reads that take only the
selected bytes from disk. :mod:`interp.extract.store` builds the store on these."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import h5py
import numpy as np

__all__ = ["STR", "create_preallocated", "decode_attr", "decode_texts", "disk_dtype", "encode_attr", "encode_texts",
           "from_storage", "read_texts", "slot_index", "take_rows", "to_storage", "write_texts"]

STR = h5py.string_dtype("utf-8")


def encode_texts(values: Sequence) -> tuple[np.ndarray, bool]:
    """Strings for an HDF5 text dataset and whether they were escaped (only when some value holds a NUL)."""
    vals = [str("" if x is None else x) for x in values]
    escaped = any("\x00" in v for v in vals)
    if escaped:
        vals = [v.replace("\\", "\\\\").replace("\x00", "\\0") for v in vals]
    return np.array(vals, dtype=object), escaped


_UNESCAPE = re.compile(r"\\(\\|0)")


def decode_texts(values: np.ndarray, escaped: bool) -> np.ndarray:
    """Inverse of :func:`encode_texts`."""
    if not escaped:
        return values
    return np.array([_UNESCAPE.sub(lambda m: "\\" if m.group(1) == "\\" else "\x00", str(v)) for v in values],
                    dtype=object)


def write_texts(group: h5py.Group, name: str, values: Sequence) -> None:
    """A text dataset, escaped if it must be (the ``escaped`` attribute says so)."""
    data, escaped = encode_texts(values)
    ds = group.create_dataset(name, data=data, dtype=STR)
    if escaped:
        ds.attrs["escaped"] = 1


def read_texts(ds: h5py.Dataset) -> np.ndarray:
    return decode_texts(ds.asstr()[()], bool(ds.attrs.get("escaped", 0)))


def to_storage(x: np.ndarray, storage_dtype: str) -> np.ndarray:
    """float32 array → what is written to disk (bfloat16 as round-to-nearest-even uint16)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if storage_dtype == "float32":
        return x
    if storage_dtype == "float16":
        with np.errstate(over="ignore"):  # an overflow becomes inf, which the store refuses with its own message
            return x.astype(np.float16)
    bits = x.view(np.uint32)
    rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def from_storage(x: np.ndarray, storage_dtype: str) -> np.ndarray:
    """On-disk values → float32."""
    if storage_dtype == "bfloat16":
        return (x.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return x.astype(np.float32, copy=False)


def disk_dtype(storage_dtype: str):
    return {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[storage_dtype]


def create_preallocated(group: h5py.Group, name: str, shape: tuple[int, ...], dtype) -> h5py.Dataset:
    """A contiguous dataset whose space is reserved now (sparse on disk) and never filled."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    space = h5py.h5s.create_simple(shape)
    h5py.h5d.create(group.id, name.encode(), h5py.h5t.py_create(np.dtype(dtype)), space, dcpl=dcpl)
    return group[name]


def encode_attr(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)) or value is None:
        return json.dumps(value, sort_keys=True)
    return value


def decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{n":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def slot_index(slots: np.ndarray) -> int | slice | np.ndarray:
    """``slots`` as the cheapest index HDF5 can read: one slot, a contiguous run, else the array itself."""
    slots = np.asarray(slots)
    if len(slots) == 1:
        return slice(int(slots[0]), int(slots[0]) + 1)
    if len(slots) and np.array_equal(slots, np.arange(slots[0], slots[0] + len(slots))):
        return slice(int(slots[0]), int(slots[0]) + len(slots))
    return slots


def take_rows(ds: h5py.Dataset, rows: np.ndarray | None, *index) -> np.ndarray:
    """``ds[rows, *index]`` with ``rows`` in any order (None: every row), reading only the selected bytes from disk
    (an array in ``index[0]``, which HDF5 cannot read beside a row list, is taken from the read instead)."""
    later = None
    if index and isinstance(index[0], np.ndarray):  # several scattered slots: read their hull, then take them
        later, first = index[0] - index[0].min(), slice(int(index[0].min()), int(index[0].max()) + 1)
        index = (first, *index[1:])
    if rows is None:
        out = ds[(slice(None), *index)]
    elif len(rows) == 0:
        out = np.zeros((0,) + ds[(slice(0, 1), *index)].shape[1:], dtype=ds.dtype)
    else:
        order = np.argsort(rows)
        uniq, inverse = np.unique(rows[order], return_inverse=True)
        data = ds[(uniq.tolist(), *index)]
        out = np.empty((len(rows),) + data.shape[1:], dtype=ds.dtype)
        out[order] = data[inverse]
    return out if later is None else out[:, later]
