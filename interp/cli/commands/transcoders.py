"""``anydepth transcoders {train,evaluate,list}``: per-layer MLP transcoders in sae-lens format."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from interp import UserError
from interp.config import add_arguments, from_namespace, to_dict

DEFAULT_ROOT = "activations/transcoders"


@dataclass
class TranscoderDataConfig:
    """Where training tokens come from and where transcoders go."""

    layers: tuple[int, ...] = field(default=(), metadata={
        "help": "layers (default: best probe layer ±1 with --probes, else the three middle layers)"})
    probes: str | None = field(default=None, metadata={"help": "ProbeSet path, to centre the default layers"})
    dataset: str = field(default="demo", metadata={
        "help": "dataset(s) for training text (prompt + response/target); comma-separated names are mixed"})
    split: str | None = field(default=None, metadata={"help": "dataset split"})
    limit: int | None = field(default=None, metadata={"help": "at most this many records (per dataset)"})
    continuations: str | None = field(default=None, metadata={"help": "continuations JSONL to use as text"})
    max_tokens: int = field(default=50000, metadata={"help": "training tokens per layer (at most)"})
    eval_fraction: float = field(default=0.2, metadata={"help": "rows held out for evaluation"})
    eval_max_tokens: int | None = field(default=20000, metadata={"help": "evaluate on at most this many tokens"})
    root: str = field(default=DEFAULT_ROOT, metadata={"help": "output root: <root>/<model>/layer_<L>"})
    seed: int = field(default=0, metadata={"help": "random seed (row split)"})


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "model"


def token_rows(loaded, dcfg: TranscoderDataConfig) -> list[list[int]]:
    """Chat-formatted prompt ‖ response ‖ Safety-Token span rows (so the span is in the training distribution)."""
    from interp.data import load_dataset
    from interp.generate import continuations as cont
    from interp.spans.derive import derive_safety_spans, encode_response, format_prompt_ids

    span = list(derive_safety_spans(loaded.tokenizer).span_ids)
    if dcfg.continuations:
        return [list(c.prompt_ids) + list(c.response_ids) + span for c in cont.load_jsonl(dcfg.continuations)]
    rows = []
    for name in [n.strip() for n in dcfg.dataset.split(",") if n.strip()]:
        for rec in load_dataset(name, split=dcfg.split, limit=dcfg.limit, seed=dcfg.seed):
            p = format_prompt_ids(loaded.tokenizer, rec.prompt)
            text = rec.response or rec.meta.get("target") or ""
            rows.append(list(p) + encode_response(loaded.tokenizer, p, text) + span)
    return rows


def split_rows(rows: list[list[int]], fraction: float, seed: int) -> tuple[list, list]:
    import random

    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(round(fraction * len(rows)))) if len(rows) > 1 else 0
    return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]


def default_layers(n: int, probes: str | None) -> list[int]:
    if probes:
        from interp.probes import ProbeSet

        best = int(ProbeSet.load(probes).best_layer)
    else:
        best = n // 2
    return [L for L in (best - 1, best, best + 1) if 0 <= L < n]


def train_layers(loaded, dcfg: TranscoderDataConfig, tcfg) -> list[dict]:
    """Train, evaluate and save one transcoder per layer; returns their summaries."""
    from interp.causal.transcoders import (
        collect_mlp_io_layers,
        evaluate_transcoders,
        save_transcoder,
        train_transcoder,
    )
    from interp.model.hooks import mlp_in, mlp_out, n_layers

    n = n_layers(loaded.model)
    layers = list(dcfg.layers) or default_layers(n, dcfg.probes)
    if any(not 0 <= L < n for L in layers):
        raise UserError(f"--layers must lie in 0..{n - 1}")
    train_rows, eval_rows = split_rows(token_rows(loaded, dcfg), dcfg.eval_fraction, dcfg.seed)
    if not train_rows or not eval_rows:
        raise UserError("need at least two text rows to train and evaluate a transcoder")
    device = str(next(loaded.model.parameters()).device)
    io = collect_mlp_io_layers(loaded.model, train_rows, layers, max_tokens=dcfg.max_tokens)
    trained = {}
    for L in layers:
        x, y = io.pop(L)
        meta = {"model_name": loaded.model_id, "hook_name": mlp_in(L), "hook_name_out": mlp_out(L),
                "hook_layer": L, "hook_layer_out": L, "trained_by": "anydepth-interp"}
        trained[L] = train_transcoder(x, y, tcfg, meta, device=device)
        del x, y
    metrics = evaluate_transcoders(loaded.model, {L: tc.to(device) for L, (tc, _) in trained.items()}, eval_rows,
                                   max_tokens=dcfg.eval_max_tokens)
    out = []
    for L, (tc, log) in trained.items():
        folder = Path(dcfg.root) / _safe(loaded.model_id) / f"layer_{L}"
        m = metrics[L]
        save_transcoder(tc.to("cpu"), folder, {"metrics": m, "train": log, "train_config": to_dict(tcfg),
                                               "data_config": to_dict(dcfg), "model": loaded.provenance(),
                                               "n_train_rows": len(train_rows), "n_eval_rows": len(eval_rows)})
        rec = "n/a" if m["loss_recovered"] is None else f"{m['loss_recovered']:.3f}"
        print(f"layer {L}: FVU {m['fvu']:.3f}, L0 {m['l0']:.1f}, Δ loss spliced {m['delta_loss']:+.4f} "
              f"(clean {m['loss_clean']:.3f}, MLP zero-ablated {m['loss_zero_ablated']:.3f}, loss recovered {rec})"
              f" -> {folder}")
        out.append({"layer": L, "path": str(folder), **m})
    return out


def register(subparsers) -> None:
    from interp.causal.transcoders import TranscoderTrainConfig
    from interp.model.loading import ModelConfig

    p = subparsers.add_parser("transcoders", help="train / evaluate / list MLP transcoders (sae-lens format)")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train transcoders on a few layers and save them in sae-lens format")
    add_arguments(t, ModelConfig)
    add_arguments(t, TranscoderDataConfig)
    add_arguments(t, TranscoderTrainConfig, skip=("seed",))  # --seed from the data config serves both
    t.set_defaults(func=run_train)
    e = sub.add_parser("evaluate", help="FVU, L0 and spliced next-token loss of saved transcoders")
    add_arguments(e, ModelConfig)
    add_arguments(e, TranscoderDataConfig, skip=("layers", "probes", "max_tokens", "root"))
    e.add_argument("paths", nargs="+", help="transcoder folders")
    e.set_defaults(func=run_evaluate)
    ls = sub.add_parser("list", help="list saved transcoders and their metrics")
    ls.add_argument("--root", default=DEFAULT_ROOT, help=f"folder to search (default: {DEFAULT_ROOT})")
    ls.set_defaults(func=run_list)


def run_train(args) -> int:
    from interp.causal.transcoders import TranscoderTrainConfig
    from interp.model.loading import ModelConfig, load_model

    loaded = load_model(from_namespace(ModelConfig, args))
    train_layers(loaded, from_namespace(TranscoderDataConfig, args), from_namespace(TranscoderTrainConfig, args))
    return 0


def run_evaluate(args) -> int:
    from interp.causal.transcoders import evaluate_transcoder, load_transcoder, transcoder_layer
    from interp.model.loading import ModelConfig, load_model

    loaded = load_model(from_namespace(ModelConfig, args))
    dcfg = from_namespace(TranscoderDataConfig, args)
    _, eval_rows = split_rows(token_rows(loaded, dcfg), dcfg.eval_fraction, dcfg.seed)
    device = str(next(loaded.model.parameters()).device)
    for path in args.paths:
        tc = load_transcoder(path, device=device)
        metrics = evaluate_transcoder(loaded.model, tc, transcoder_layer(tc), eval_rows, max_tokens=dcfg.eval_max_tokens)
        print(json.dumps({"path": path, **metrics}))
    return 0


def run_list(args) -> int:
    from interp.causal.transcoders import list_transcoders

    items = list_transcoders(args.root)
    if not items:
        print(f"no transcoders under {args.root} (train some with `anydepth transcoders train`)")
    for it in items:
        m = it["metrics"]
        fv = f"FVU {m['fvu']:.3f} L0 {m['l0']:.1f} Δloss {m['delta_loss']:+.4f}" if m else "no metrics"
        print(f"{it['path']}: {it['architecture']} {it['hook_name']} d_in {it['d_in']} d_sae {it['d_sae']}; {fv}")
    return 0
