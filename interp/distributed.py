"""Beyond one machine: data-parallel extraction under ``torchrun`` and multi-GPU model placement.

Each rank extracts one *contiguous* block of the examples (block edges balance the token count, fixed by the
data, so every rank and every rerun computes the same split) into its own :class:`ActivationStore` shard::

    <out>.shards/manifest.json                  world size, block edges, example ids in the original order
    <out>.shards/rank-00000-of-00002.h5         a normal store holding rows [start, stop) of the full list

Shards resume like any store (rows marked ``done`` are skipped). :func:`finalize` then writes ``<out>``:
either an HDF5 **virtual dataset** file (``mode="virtual"``: tiny, maps each block onto the shard files
through relative paths, so keep the ``.shards`` folder beside it) or a standalone merged copy
(``mode="copy"``). Both open with :meth:`ActivationStore.open` and hold the examples in the original order,
with the same provenance as a one-process run.

Ranks only coordinate (a barrier before rank 0 finalizes), so the process group is gloo on CPU and NCCL on
GPU, each rank on ``cuda:LOCAL_RANK``. :func:`dispatch_across_gpus` splits one large model over several GPUs
(accelerate) for models that do not fit on one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import h5py
import numpy as np

from interp import UserError

SHARD_KEYS = ("shard_rank", "shard_world_size", "shard_start", "shard_stop", "n_examples_total")
MERGE_MODES = ("virtual", "copy")
_STR = h5py.string_dtype("utf-8")


# ------------------------------------------------------------------------------------------------ sharding
def example_cost(prompt_len: int, response_len: int, depths: Sequence[int], span_len: int) -> int:
    """Tokens of one packed row: prompt + response cut at the deepest depth + one span per valid depth."""
    r = min(response_len, max(depths))
    return prompt_len + r + span_len * sum(1 for d in depths if d <= r)


def shard_bounds(costs: Sequence[int], world_size: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` blocks, one per rank, with near-equal summed cost (some may be empty)."""
    if world_size < 1:
        raise UserError(f"world size must be >= 1, got {world_size}")
    prefix = np.concatenate([[0], np.cumsum(np.asarray(costs, dtype=np.int64))])
    total = prefix[-1]
    edges = [0]
    for k in range(1, world_size):
        # first index whose prefix reaches k/W of the total, never before the previous edge
        edges.append(max(edges[-1], int(np.searchsorted(prefix, total * k / world_size, side="left"))))
    edges.append(len(costs))
    return [(edges[k], edges[k + 1]) for k in range(world_size)]


def shard_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".shards")


def shard_path(out: str | Path, rank: int, world_size: int) -> Path:
    return shard_dir(out) / f"rank-{rank:05d}-of-{world_size:05d}.h5"


def _ids_hash(ids: Sequence[str]) -> str:  # same digest as interp.store
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def _write_json_atomic(path: Path, data: dict, suffix: str) -> None:
    tmp = path.with_name(f"{path.name}.{suffix}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_manifest(out: str | Path, ids: Sequence[str], bounds: Sequence[tuple[int, int]], rank: int = 0) -> Path:
    """Record the split (refuses to mix with shards of another example list or world size)."""
    path = shard_dir(out) / "manifest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": 1, "world_size": len(bounds), "n_examples": len(ids), "bounds": [list(b) for b in bounds],
            "ids": [str(i) for i in ids], "example_ids_sha256": _ids_hash([str(i) for i in ids])}
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


@dataclass
class ShardResult:
    rank: int
    world_size: int
    start: int
    stop: int
    path: Path
    n_computed: int
    n_tokens: int = 0


def extract_shard(model, tokenizer, items: Sequence, out: str | Path, *, rank: int, world_size: int, spans,
                  depths: Sequence[int], provenance: dict | None = None, **extract_kwargs) -> ShardResult:
    """Extract this rank's block of ``items`` into its shard of ``out`` (resuming finished rows).

    ``extract_kwargs`` go to :func:`interp.extract.extract_to_store` (layers, hooks, positions, storage_dtype,
    batch_size, too_long, progress, on_batch). Works without torch.distributed (tests, manual splits).
    """
    from interp.extract import extract_to_store, parse_depths

    if not 0 <= rank < world_size:
        raise UserError(f"rank {rank} outside world size {world_size}")
    if not items:
        raise UserError("no examples to extract")
    depths = parse_depths(depths)
    h = len(spans.span_ids)
    costs = [example_cost(len(it.prompt_ids), len(it.response_ids), depths, h) for it in items]
    bounds = shard_bounds(costs, world_size)
    write_manifest(out, [it.id for it in items], bounds, rank)
    start, stop = bounds[rank]
    path = shard_path(out, rank, world_size)
    if start == stop:
        return ShardResult(rank, world_size, start, stop, path, 0)
    prov = dict(provenance or {})
    if isinstance(prov.get("device"), str):  # cuda:0 / cuda:1 on different ranks: one store-wide value
        prov["device"] = prov["device"].split(":")[0]
    prov.update(shard_rank=rank, shard_world_size=world_size, shard_start=start, shard_stop=stop,
                n_examples_total=len(items))
    res = extract_to_store(model, tokenizer, list(items[start:stop]), path, spans=spans, depths=depths,
                           provenance=prov, **extract_kwargs)
    return ShardResult(rank, world_size, start, stop, path, res.n_computed, res.n_tokens)


# ------------------------------------------------------------------------------------------------ finalize
def _activation_datasets(h5: h5py.File) -> list[str]:
    names: list[str] = []
    for top in ("acts", "baselines"):
        if top in h5:
            h5[top].visititems(lambda name, obj, top=top: names.append(f"{top}/{name}")
                               if isinstance(obj, h5py.Dataset) else None)
    return sorted(names)


def finalize(out: str | Path, mode: str = "virtual", *, dest: str | Path | None = None,
             rows_per_copy: int = 256) -> Path:
    """Merge the finished shards of ``out`` into one store at ``dest`` (default ``out``), atomically.

    ``mode="virtual"`` maps the shards (keep the ``.shards`` folder beside ``dest``); ``"copy"`` copies them.
    """
    from interp.store import ActivationStore

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
        ref = {k: v for k, v in stores[0].h5.attrs.items() if k not in SHARD_KEYS and k != "example_ids_sha256"}
        for s in stores[1:]:
            other = {k: v for k, v in s.h5.attrs.items() if k not in SHARD_KEYS and k != "example_ids_sha256"}
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
            f.create_dataset("depths", data=stores[0].h5["depths"][()])
            ex = f.create_group("examples")
            for key in stores[0].h5["examples"]:
                src = [s.h5["examples"][key] for s in stores]
                if h5py.check_string_dtype(src[0].dtype) is not None:
                    data = np.array([x for d in src for x in d.asstr()[()]], dtype=object)
                    ex.create_dataset(key, data=data, dtype=_STR)
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


# ------------------------------------------------------------------------------------------------ torchrun
def dist_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the torchrun environment (``(0, 1, 0)`` outside it)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", 1)) > 1


def rank_device(device: str = "auto") -> str:
    """This rank's device: ``cuda:LOCAL_RANK`` when CUDA is used, else ``device`` (cpu)."""
    import torch

    _, _, local = dist_env()
    if device in ("auto", "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return "cpu" if device == "auto" else device


def init_process_group(device: str, timeout_s: float = 86400.0) -> bool:
    """Join the torchrun process group (NCCL for CUDA, gloo otherwise); False when not under torchrun."""
    import torch
    import torch.distributed as dist

    if not launched_by_torchrun() or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    kwargs = {"device_id": torch.device(device)} if backend == "nccl" else {}
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s), **kwargs)
    return True


def barrier(device: str) -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        if device.startswith("cuda"):
            dist.barrier(device_ids=[int(device.split(":")[1])])
        else:
            dist.barrier()


def run_distributed_extract(model, tokenizer, items: Sequence, out: str | Path, *, spans, depths,
                            device: str, merge: str = "virtual", **kwargs) -> ShardResult:
    """This rank's shard, a barrier, then rank 0 merges into ``out``, and a second barrier.

    Call after :func:`init_process_group` with the model on :func:`rank_device`. Only rank 0 shows progress.
    """
    rank, world, _ = dist_env()
    kwargs["progress"] = kwargs.get("progress", True) and rank == 0
    res = extract_shard(model, tokenizer, items, out, rank=rank, world_size=world, spans=spans, depths=depths,
                        **kwargs)
    barrier(device)
    if rank == 0:
        finalize(out, merge)
    barrier(device)
    return res


def is_main_rank() -> bool:
    return dist_env()[0] == 0


def rank_model_config(model_cfg):
    """``model_cfg`` with this rank's device under torchrun (``cuda:LOCAL_RANK``); unchanged otherwise."""
    if not launched_by_torchrun():
        return model_cfg
    return dataclasses.replace(model_cfg, device=rank_device(model_cfg.device))


def extract_auto(model, tokenizer, items: Sequence, out: str | Path, *, spans, depths, merge: str = "virtual",
                 **kwargs):
    """:func:`interp.extract.extract_to_store`, or its data-parallel version when launched by torchrun.

    Returns an :class:`interp.extract.ExtractResult` for ``out`` on every rank (counts are this rank's).
    """
    import torch.distributed as dist

    from interp.extract import ExtractResult, extract_to_store

    if not launched_by_torchrun():
        return extract_to_store(model, tokenizer, items, out, spans=spans, depths=depths, **kwargs)
    device = str(next(model.parameters()).device)
    owned = not dist.is_initialized()
    init_process_group(device)
    start = time.perf_counter()
    try:
        res = run_distributed_extract(model, tokenizer, items, out, spans=spans, depths=depths, device=device,
                                      merge=merge, **kwargs)
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()
    return ExtractResult(Path(out), len(items), res.n_computed, res.n_tokens, time.perf_counter() - start)


# ------------------------------------------------------------------------------------------------ big models
def dispatch_across_gpus(model, max_memory: dict | None = None, dtype=None):
    """Split ``model`` layer-wise over the visible GPUs with accelerate (whole decoder blocks per device).

    Extraction and the guard work unchanged: inputs go to the first device, accelerate's hooks move
    activations between devices, and our hooks read tensors where they are.
    """
    from accelerate import dispatch_model, infer_auto_device_map

    no_split = list(getattr(model, "_no_split_modules", None) or [])
    device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split,
                                       dtype=dtype)
    return dispatch_model(model, device_map=device_map)


# ------------------------------------------------------------------------------------------------ entry point
@dataclass
class DistExtractConfig:
    """Data-parallel extraction of a continuations file (``torchrun ... -m interp.distributed extract``)."""

    continuations: str = ""
    out: str = ""
    depths: str = "0:500:25"
    layers: str = "all"
    hooks: tuple[str, ...] = ("resid_post",)
    positions: str = "span"
    storage_dtype: str = "float16"
    batch_size: int = 4
    too_long: str = "truncate"
    merge: str = "virtual"
    timeout_s: float = 86400.0

    def run_record(self) -> dict:
        """What defines the store's content (no paths or scheduling knobs): goes into its provenance."""
        from interp.config import to_dict

        d = to_dict(self)
        for key in ("continuations", "out", "merge", "timeout_s", "batch_size"):
            d.pop(key)
        return d


def _parser():
    import argparse

    from interp.config import add_arguments
    from interp.models import ModelConfig

    p = argparse.ArgumentParser(prog="python -m interp.distributed",
                                description="Data-parallel extraction under torchrun, and merging its shards.")
    sub = p.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("extract", help="extract this rank's shard; rank 0 merges when every rank is done")
    add_arguments(ex, DistExtractConfig)
    add_arguments(ex, ModelConfig)
    fin = sub.add_parser("finalize", help="merge finished shards into one store")
    fin.add_argument("out")
    fin.add_argument("--merge", default="virtual", choices=MERGE_MODES)
    return p


def extract_main(cfg: DistExtractConfig, model_cfg) -> Path | None:
    """Load the model on this rank's device, extract its shard, merge on rank 0."""
    from interp.config import save_config
    from interp.continuations import load_jsonl
    from interp.extract import parse_layers
    from interp.models import load_model
    from interp.templates import derive_safety_spans

    if not cfg.continuations or not cfg.out:
        raise UserError("--continuations and --out are required")
    if cfg.merge not in MERGE_MODES:
        raise UserError(f"--merge must be one of {MERGE_MODES}, got {cfg.merge!r}")
    import torch.distributed as dist

    model_cfg = rank_model_config(model_cfg)
    init_process_group(rank_device(model_cfg.device), cfg.timeout_s)
    try:
        items = load_jsonl(cfg.continuations)
        loaded = load_model(model_cfg)
        spans = derive_safety_spans(loaded.tokenizer)
        prov = dict(loaded.provenance(), run_config=cfg.run_record())
        res = extract_auto(loaded.model, loaded.tokenizer, items, cfg.out, spans=spans, depths=cfg.depths,
                           merge=cfg.merge, layers=parse_layers(cfg.layers, loaded.n_layers), hooks=cfg.hooks,
                           positions=cfg.positions, storage_dtype=cfg.storage_dtype, batch_size=cfg.batch_size,
                           too_long=cfg.too_long, provenance=prov)
        if is_main_rank():
            save_config(cfg, Path(cfg.out).with_name(Path(cfg.out).name + ".config.json"))
        return res.path
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    import sys

    from interp.config import from_namespace
    from interp.models import ModelConfig

    args = _parser().parse_args(argv)
    try:
        if args.command == "finalize":
            print(finalize(args.out, args.merge))
            return 0
        merged = extract_main(from_namespace(DistExtractConfig, args), from_namespace(ModelConfig, args))
        if is_main_rank():
            print(merged)
        return 0
    except UserError as err:
        print(f"interp.distributed: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
