"""Beyond one machine: data-parallel extraction under ``torchrun`` and multi-GPU model placement.

Each rank extracts one *contiguous* block of the examples (block edges balance the token count, fixed by the
data, so every rank and every rerun computes the same split) into its own :class:`ActivationStore` shard
(``<out>.shards/rank-00000-of-00002.h5``, layout in :mod:`interp.extract.shards`). Shards resume like any store (rows
marked ``done`` are skipped). :func:`interp.extract.shards.finalize` then merges them into
``<out>``: an HDF5 virtual dataset file over the shards, or a standalone merged copy.

Ranks only coordinate (a barrier before rank 0 finalizes), so the process group is gloo on CPU and NCCL on
GPU, each rank on ``cuda:LOCAL_RANK``. :func:`dispatch_across_gpus` splits one large model over several GPUs
(accelerate) for models that do not fit on one.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np

from interp import UserError
from interp.extract.shards import (
    MERGE_MODES,
    finalize,
    shard_path,
    write_manifest,
)

__all__ = [
    "DistExtractConfig", "ShardResult", "barrier", "dispatch_across_gpus", "dist_env", "example_cost",
    "extract_auto", "extract_main", "extract_shard", "init_process_group", "is_main_rank",
    "launched_by_torchrun", "main", "rank_device", "rank_model_config", "run_distributed_extract",
    "shard_bounds",
]


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

    ``extract_kwargs`` go to :func:`interp.extract.packed.extract_to_store` (layers, hooks, positions, storage_dtype,
    batch_size, too_long, progress, on_batch). Works without torch.distributed (tests, manual splits).
    """
    from interp.extract.packed import extract_to_store, parse_depths, token_ids_sha256

    if not 0 <= rank < world_size:
        raise UserError(f"rank {rank} outside world size {world_size}")
    if not items:
        raise UserError("no examples to extract")
    depths = parse_depths(depths, extract_kwargs.get("answer_length"))
    h = len(spans.span_ids)
    costs = [example_cost(len(it.prompt_ids), len(it.response_ids), depths, h) for it in items]
    bounds = shard_bounds(costs, world_size)
    write_manifest(out, [it.id for it in items], bounds, rank, token_ids_sha256=token_ids_sha256(items))
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


# ------------------------------------------------------------------------------------------------ torchrun
def dist_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the torchrun environment (``(0, 1, 0)`` outside it); values that are
    not integers or out of range are refused in one line."""
    got = []
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        raw = os.environ.get(name, "").strip()
        try:
            got.append(int(raw) if raw else default)
        except ValueError:
            raise UserError(f"environment variable {name}={raw!r} is not an integer (torchrun sets it); unset it "
                            "to run in one process") from None
    rank, world, local = got
    if world < 1 or not 0 <= rank < world or local < 0:
        raise UserError(f"torchrun environment out of range: RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local} "
                        "(needs WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE, LOCAL_RANK >= 0); unset them to run in "
                        "one process")
    return rank, world, local


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or dist_env()[1] > 1


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
    """:func:`interp.extract.packed.extract_to_store`, or its data-parallel version when launched by torchrun.

    Returns an :class:`interp.extract.packed.ExtractResult` for ``out`` on every rank (counts are this rank's).
    """
    import torch.distributed as dist

    from interp.extract.packed import ExtractResult, extract_to_store

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
    """Data-parallel extraction of a continuations file (``torchrun ... -m interp.extract.distributed extract``)."""

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
    from interp.model.loading import ModelConfig

    p = argparse.ArgumentParser(prog="python -m interp.extract.distributed",
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
    from interp.extract.packed import parse_layers
    from interp.generate.continuations import load_jsonl
    from interp.model.loading import load_model
    from interp.spans.derive import derive_safety_spans

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
    from interp.model.loading import ModelConfig

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
        print(f"interp.extract.distributed: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
