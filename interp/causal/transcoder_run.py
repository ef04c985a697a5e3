"""The transcoder stage: training text as token rows, then one MLP transcoder per layer trained, evaluated (FVU,
L0, spliced next-token loss) and saved in sae-lens format."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from interp import UserError
from interp.causal.transcoders import (
    TranscoderTrainConfig,
    collect_mlp_io_layers,
    evaluate_transcoder,
    evaluate_transcoders,
    load_transcoder,
    save_transcoder,
    train_transcoder,
    transcoder_layer,
)
from interp.config import to_dict
from interp.model.hooks import mlp_in, mlp_out, n_layers
from interp.model.loading import LoadedModel, ModelConfig, as_loaded
from interp.results import Result

__all__ = ["DEFAULT_ROOT", "TranscoderDataConfig", "TranscodersResult", "default_layers", "evaluate_saved",
           "split_rows", "token_rows", "train_transcoders"]

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


@dataclass
class TranscodersResult(Result):
    """Per trained layer: its folder and held-out metrics (FVU, L0, spliced / clean / zero-ablated loss)."""

    kind = "transcoders"
    layers: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        lines = []
        for m in self.layers:
            rec = "n/a" if m["loss_recovered"] is None else f"{m['loss_recovered']:.3f}"
            lines.append(f"layer {m['layer']}: FVU {m['fvu']:.3f}, L0 {m['l0']:.1f}, Δ loss spliced "
                         f"{m['delta_loss']:+.4f} (clean {m['loss_clean']:.3f}, MLP zero-ablated "
                         f"{m['loss_zero_ablated']:.3f}, loss recovered {rec}) -> {m['path']}")
        return "\n".join(lines)


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
    """(train, eval) rows: a seeded shuffle, ``fraction`` of them (at least one) held out."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(round(fraction * len(rows)))) if len(rows) > 1 else 0
    return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]


def default_layers(n: int, probes: str | None) -> list[int]:
    """The probe set's best layer ±1 (the middle layer ±1 without one), inside ``0..n-1``."""
    if probes:
        from interp.probes import ProbeSet

        best = int(ProbeSet.load(probes).best_layer)
    else:
        best = n // 2
    return [L for L in (best - 1, best, best + 1) if 0 <= L < n]


def train_transcoders(model: ModelConfig | LoadedModel | str, dcfg: TranscoderDataConfig | None = None,
                      tcfg: TranscoderTrainConfig | None = None) -> TranscodersResult:
    """Train, evaluate and save one transcoder per layer of ``dcfg`` under ``<root>/<model>/layer_<L>``."""
    loaded = as_loaded(model)
    dcfg, tcfg = dcfg or TranscoderDataConfig(), tcfg or TranscoderTrainConfig()
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
        save_transcoder(tc.to("cpu"), folder, {"metrics": metrics[L], "train": log, "train_config": to_dict(tcfg),
                                               "data_config": to_dict(dcfg), "model": loaded.provenance(),
                                               "n_train_rows": len(train_rows), "n_eval_rows": len(eval_rows)})
        out.append({"layer": L, "path": str(folder), **metrics[L]})
    return TranscodersResult(out)


def evaluate_saved(model: ModelConfig | LoadedModel | str, dcfg: TranscoderDataConfig,
                   paths: list[str]) -> list[dict]:
    """FVU, L0 and spliced next-token loss of saved transcoders on ``dcfg``'s held-out rows."""
    loaded = as_loaded(model)
    _, eval_rows = split_rows(token_rows(loaded, dcfg), dcfg.eval_fraction, dcfg.seed)
    device = str(next(loaded.model.parameters()).device)
    out = []
    for path in paths:
        tc = load_transcoder(path, device=device)
        out.append({"path": path, **evaluate_transcoder(loaded.model, tc, transcoder_layer(tc), eval_rows,
                                                         max_tokens=dcfg.eval_max_tokens)})
    return out
