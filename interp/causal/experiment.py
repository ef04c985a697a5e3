"""Shared setup of the causal experiments (patching, ablations): model, span, examples (continuations), openers, probes, output."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from interp import UserError
from interp.causal.inputs import Example
from interp.causal.metrics import opener_tokens
from interp.config import save_config, to_dict
from interp.guard.openers import OpenerTree
from interp.model.hooks import n_layers
from interp.spans.derive import SafetySpans, derive_safety_spans


@dataclass
class CausalConfig:
    """Data, depths and outputs shared by ``anydepth patch`` / ``ablate``."""

    dataset: str = field(default="demo", metadata={"help": "dataset name (see `anydepth datasets list`)"})
    split: str | None = field(default=None, metadata={"help": "dataset split / subset"})
    limit: int | None = field(default=None, metadata={"help": "at most this many records"})
    continuations: str | None = field(default=None, metadata={
        "help": "continuations JSONL (from generation/extraction); default: generate and cache in --out"})
    generation_mode: str = field(default="auto", metadata={
        "help": "when generating: auto (forced opener on harmful, own text on benign), prefill or own",
        "choices": ("auto", "prefill", "own")})
    max_new_tokens: int = field(default=48, metadata={"help": "tokens to generate per continuation"})
    depths: tuple[int, ...] = field(default=(0, 8, 24), metadata={"help": "response depths of the span"})
    layers: tuple[int, ...] = field(default=(), metadata={"help": "layers (default: every layer)"})
    probes: str | None = field(default=None, metadata={"help": "ProbeSet path (probe direction / Δ probe)"})
    out: str = field(default="runs/causal", metadata={"help": "output folder"})
    seed: int = field(default=0, metadata={"help": "random seed (controls, bootstrap)"})


class ProbeAdapter:
    """A :class:`interp.probes.ProbeSet` seen by the causal code: logits, torch directions, its hook site."""

    def __init__(self, probes) -> None:
        from interp.extract.store import tl_name

        self.probes = probes
        self.layers = list(probes.layers)
        self.best_layer = int(probes.best_layer)
        self._tl_name = tl_name
        if not probes.hook.endswith(("resid_pre", "resid_post")):
            raise UserError(f"probes read {probes.hook!r}; causal runs support resid_pre / resid_post probes")

    def logit(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        return self.probes.logit(hidden.float(), layer)

    def direction(self, layer: int) -> torch.Tensor:
        return torch.as_tensor(np.asarray(self.probes.direction(layer)), dtype=torch.float64)

    def site(self, layer: int) -> str:
        return self._tl_name(self.probes.hook, layer)


@dataclass
class Context:
    model: Any
    tokenizer: Any
    span: SafetySpans
    examples: list[Example]
    openers: OpenerTree
    pad_id: int
    layers: list[int]
    probe: ProbeAdapter | None
    out: Path
    provenance: dict


def _continuations(cfg: CausalConfig, loaded, out: Path) -> list:
    from interp.data import load_dataset
    from interp.generate import continuations as cont

    if cfg.continuations:
        return cont.load_jsonl(cfg.continuations)
    records = load_dataset(cfg.dataset, split=cfg.split, limit=cfg.limit, seed=cfg.seed)
    if all(r.response for r in records):
        return cont.from_records(records, loaded.tokenizer)
    key = _hash([loaded.model_id, cfg.dataset, cfg.split, cfg.limit, cfg.generation_mode, cfg.max_new_tokens,
                 cfg.seed])
    path = out / f"continuations-{key}.jsonl"
    if path.is_file():
        return cont.load_jsonl(path)
    items = cont.generate_continuations(loaded.model, loaded.tokenizer, records, mode=cfg.generation_mode,
                                        max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    cont.save_jsonl(items, path)
    return items


def _hash(values: list) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


def setup(cfg: CausalConfig, model, sub: str) -> Context:
    """Load everything an experiment needs (``model``: a spec, a ModelConfig or a loaded model); outputs go to
    ``<out>/<sub>``."""
    from interp.model.loading import as_loaded
    from interp.naming import check_out

    check_out(Path(cfg.out) / sub, "dir")  # before the model loads
    loaded = as_loaded(model)
    out = Path(cfg.out) / sub
    out.mkdir(parents=True, exist_ok=True)
    spans = derive_safety_spans(loaded.tokenizer)
    items = _continuations(cfg, loaded, Path(cfg.out))
    from interp.probes.groups import content_groups

    groups = content_groups([c.prompt for c in items], [(c.meta or {}).get("pair_id") for c in items])
    examples = [Example(c.id, c.label, tuple(c.prompt_ids), tuple(c.response_ids), c.source, str(g))
                for c, g in zip(items, groups)]
    if not any(e.label == "harmful" for e in examples) or not any(e.label == "benign" for e in examples):
        raise UserError("causal experiments need harmful and benign examples")
    tok = loaded.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    n = n_layers(loaded.model)
    layers = list(cfg.layers) if cfg.layers else list(range(n))
    if any(not 0 <= L < n for L in layers):
        raise UserError(f"--layers must lie in 0..{n - 1}")
    probe = None
    if cfg.probes:
        from interp.probes import ProbeSet

        probe = ProbeAdapter(ProbeSet.load(cfg.probes))
    prov = {"model": loaded.provenance(), "span": spans.to_dict(), "n_examples": len(examples),
            "n_harmful": sum(e.label == "harmful" for e in examples), "config": to_dict(cfg)}
    return Context(loaded.model, tok, spans, examples, opener_tokens(tok), int(pad), layers, probe, out, prov)


def write_result(out: Path, name: str, payload: dict, *configs) -> Path:
    """``<out>/<name>.json`` (atomic) and each config as ``<out>/<name>.config<i>.json``."""
    path = out / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    tmp.replace(path)
    for i, c in enumerate(configs):
        save_config(c, out / f"{name}.config{i}.json")
    return path


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, torch.Tensor):
        return v.tolist()
    return str(v)
