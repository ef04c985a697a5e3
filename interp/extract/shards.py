"""On-disk shards of a data-parallel extraction (:mod:`interp.extract.distributed`): layout, manifest and merging.

::

    <out>.shards/manifest.json                  world size, block edges, example ids in the original order
    <out>.shards/rank-00000-of-00002.h5         a normal store holding rows [start, stop) of the full list

:func:`finalize` writes ``<out>`` from finished shards: an HDF5 **virtual dataset** file (``mode="virtual"``:
tiny, maps each block onto the shard files through relative paths, so keep the ``.shards`` folder beside it) or
a standalone merged copy (``mode="copy"``). Both open with :meth:`ActivationStore.open` and hold the examples
in the original order, with the same provenance as a one-process run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from interp import UserError
from interp.extract.h5io import read_texts, write_texts
from interp.extract.store import ActivationStore, ids_sha256

SHARD_KEYS = ("shard_rank", "shard_world_size", "shard_start", "shard_stop", "n_examples_total")
MERGE_MODES = ("virtual", "copy")


def shard_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".shards")


def shard_path(out: str | Path, rank: int, world_size: int) -> Path:
    return shard_dir(out) / f"rank-{rank:05d}-of-{world_size:05d}.h5"


ROW_KEYS = ("example_ids_sha256", "token_ids_sha256")  # hashes over a shard's own rows: the merged file's cover all


def _write_json_atomic(path: Path, data: dict, suffix: str) -> None:
    tmp = path.with_name(f"{path.name}.{suffix}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_manifest(out: str | Path, ids: Sequence[str], bounds: Sequence[tuple[int, int]], rank: int = 0,
                   token_ids_sha256: str | None = None) -> Path:
    """Record the split (refuses to mix with shards of another example list, token ids or world size)."""
    path = shard_dir(out) / "manifest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": 1, "world_size": len(bounds), "n_examples": len(ids), "bounds": [list(b) for b in bounds],
            "ids": [str(i) for i in ids], "example_ids_sha256": ids_sha256([str(i) for i in ids]),
            "token_ids_sha256": token_ids_sha256}
    if path.exists():
        old = json.loads(path.read_text())
        if {k: old.get(k) for k in data} != data:
            raise UserError(f"{path} records another split (world size {old.get('world_size')}, "
                            f"{old.get('n_examples')} examples); finish it with the same command and world size, "
                            "or delete the .shards folder to start over")
        return path
    _write_json_atomic(path, data, f"rank{rank}")
    return path


def read_manifest(out: str | Path) -> dict:
    path = shard_dir(out) / "manifest.json"
    if not path.exists():
        raise UserError(f"no shards for {out} (expected {path}); run the distributed extraction first")
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------------ finalize
def _activation_datasets(h5: h5py.File) -> list[str]:
    names: list[str] = []
    for top in ("acts", "baselines", "positions"):
        if top in h5:
            h5[top].visititems(lambda name, obj, top=top: names.append(f"{top}/{name}")
                               if isinstance(obj, h5py.Dataset) else None)
    return sorted(names)


def finalize(out: str | Path, mode: str = "virtual", *, dest: str | Path | None = None,
             rows_per_copy: int = 256) -> Path:
    """Merge the finished shards of ``out`` into one store at ``dest`` (default ``out``), atomically.

    ``mode="virtual"`` maps the shards (keep the ``.shards`` folder beside ``dest``); ``"copy"`` copies them.
    """
    if mode not in MERGE_MODES:
        raise UserError(f"merge mode must be one of {MERGE_MODES}, got {mode!r}")
    out = Path(out)
    dest = Path(dest) if dest is not None else out
    man = read_manifest(out)
    W, N = int(man["world_size"]), int(man["n_examples"])
    parts = [(r, a, b) for r, (a, b) in enumerate(man["bounds"]) if b > a]
    stores = []
    try:
        for r, a, b in parts:
            path = shard_path(out, r, W)
            if not path.exists():
                raise UserError(f"shard {path.name} is missing; rerun the same torchrun command to finish rank {r}")
            s = ActivationStore.open(path)
            stores.append(s)
            left = int((~s.done).sum())
            if left or s.n_examples != b - a:
                raise UserError(f"shard {path.name} has {left} of {s.n_examples} rows unfinished; rerun the same "
                                "torchrun command to resume it")
        ref = {k: v for k, v in stores[0].h5.attrs.items() if k not in SHARD_KEYS and k not in ROW_KEYS}
        for s in stores[1:]:
            other = {k: v for k, v in s.h5.attrs.items() if k not in SHARD_KEYS and k not in ROW_KEYS}
            if set(other) != set(ref) or any(not np.array_equal(other[k], ref[k]) for k in ref):
                raise UserError(f"{s.path.name} was written with another provenance than {stores[0].path.name}")
        ids = [str(x) for s in stores for x in s.examples["id"]]
        if ids != man["ids"] or len(ids) != N:
            raise UserError(f"shards of {out} do not hold the manifest's examples in order; delete the .shards "
                            "folder and extract again")
        tmp = dest.with_name(dest.name + ".merge.tmp")
        _merge(tmp, stores, parts, ref, man, mode, dest, rows_per_copy)
        os.replace(tmp, dest)
    finally:
        for s in stores:
            s.close()
    return dest


def _merge(tmp: Path, stores, parts, ref: dict, man: dict, mode: str, dest: Path, rows_per_copy: int) -> None:
    N = int(man["n_examples"])
    try:
        with h5py.File(tmp, "w") as f:
            for k, v in ref.items():
                f.attrs[k] = v
            f.attrs["example_ids_sha256"] = man["example_ids_sha256"]
            if man.get("token_ids_sha256"):
                f.attrs["token_ids_sha256"] = man["token_ids_sha256"]
            f.create_dataset("depths", data=stores[0].h5["depths"][()])
            ex = f.create_group("examples")
            keys = list(stores[0].h5["examples"])
            if any(s.has_depth_labels for s in stores):  # a shard without insertion rows has no depth_label
                keys = [*[k for k in keys if k != "depth_label"], "depth_label"]
            for key in keys:
                if key == "depth_label":
                    ex.create_dataset(key, data=np.concatenate([s.depth_labels for s in stores], axis=0))
                    continue
                src = [s.h5["examples"][key] for s in stores]
                if h5py.check_string_dtype(src[0].dtype) is not None:  # re-escaped as a whole (NULs in one shard)
                    write_texts(ex, key, [x for d in src for x in read_texts(d)])
                else:
                    ex.create_dataset(key, data=np.concatenate([d[()] for d in src], axis=0))
            for name in _activation_datasets(stores[0].h5):
                src0 = stores[0].h5[name]
                shape, dtype = (N,) + src0.shape[1:], src0.dtype
                if mode == "virtual":
                    layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
                    for s, (_, a, b) in zip(stores, parts):
                        rel = os.path.relpath(s.path, dest.parent)
                        layout[a:b] = h5py.VirtualSource(rel, name, shape=s.h5[name].shape)
                    ds = f.create_virtual_dataset(name, layout)
                else:
                    ds = f.create_dataset(name, shape=shape, dtype=dtype)
                    for s, (_, a, b) in zip(stores, parts):
                        src = s.h5[name]
                        for i in range(0, b - a, rows_per_copy):
                            j = min(i + rows_per_copy, b - a)
                            ds[a + i:a + j] = src[i:j]
                for k, v in src0.attrs.items():
                    ds.attrs[k] = v
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
