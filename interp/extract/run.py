"""The extraction stage: continuations (a file, or a dataset's responses generated where missing) into an HDF5
activation store of the Safety-Token span at every depth, with the run's config beside it."""

from __future__ import annotations

import json
from pathlib import Path

import interp
from interp import UserError
from interp.config import run_config, save_json, short_hash
from interp.extract import distributed
from interp.extract.packed import ExtractConfig, ExtractResult, parse_depths, parse_layers
from interp.generate.continuations import (
    GenerateConfig,
    continuations_for,
    load_jsonl,
    load_records,
    save_jsonl,
)
from interp.model.loading import LoadedModel, ModelConfig, as_loaded, model_config_of
from interp.naming import check_out, file_slug
from interp.spans.derive import derive_safety_spans

__all__ = ["check_made_with", "default_store_path", "extract_activations"]


def default_store_path(model_cfg: ModelConfig, cfg: ExtractConfig, configs: dict, data: str) -> Path:
    """``activations/<model>/<data>-<config hash>.h5`` (config-addressed)."""
    name = Path(cfg.continuations).stem if cfg.continuations else data
    return Path("activations") / file_slug(model_cfg.model) / f"{file_slug(name)}-{short_hash(configs)}.h5"


def extract_activations(model: ModelConfig | LoadedModel | str, cfg: ExtractConfig, generate: GenerateConfig | None = None, *,
            progress: bool = True) -> ExtractResult:
    """Extract ``cfg``'s depths × layers × hooks into ``cfg.out`` (resuming rows already done).

    The rows are ``cfg.continuations`` (a JSONL from ``generate`` or ``corpus``), else ``generate.data``'s records
    with their dataset responses, continued by the model where they have none (saved beside the store, reused on a
    resumed run). Continuations made with another tokenizer are refused.
    """
    generate = generate or GenerateConfig()
    generate.validate()
    depths = parse_depths(cfg.depths, cfg.answer_length)  # 'end' = the answer length; checked before any work
    model_cfg = model_config_of(model)
    configs = run_config(model=model_cfg, generate=generate, extract=cfg)
    out = check_out(Path(cfg.out) if cfg.out else default_store_path(model_cfg, cfg, configs, generate.data), "file")
    records = None if cfg.continuations else load_records(generate.data, generate.split, generate.limit,
                                                          generate.seed)
    loaded = model if isinstance(model, LoadedModel) else as_loaded(distributed.rank_model_config(model_config_of(model)))
    items, source, sidecar = _items(loaded, cfg, generate, records, out, progress)
    check_made_with(items, source, loaded, sidecar)
    provenance = {**loaded.provenance(), "package_version": interp.__version__, "continuations": source,
                  "config": configs}
    result = distributed.extract_auto(
        loaded.model, loaded.tokenizer, items, out, spans=derive_safety_spans(loaded.tokenizer), depths=depths,
        layers=parse_layers(cfg.layers, loaded.n_layers), hooks=cfg.hooks, positions=cfg.positions,
        storage_dtype=cfg.store_dtype, batch_size=cfg.batch_size, too_long=cfg.too_long, provenance=provenance,
        progress=progress, answer_length=cfg.answer_length, controls=_controls(loaded, cfg))
    if distributed.is_main_rank():  # under torchrun only rank 0 writes the shared config file
        save_json({**configs, "model_provenance": loaded.provenance(), "store": str(out),
                   "continuations": source}, out.with_suffix(".config.json"))
    return result


def _controls(loaded, cfg: ExtractConfig):
    """The position study's control spans when ``cfg.controls`` asks for them."""
    if not cfg.controls:
        return None
    from interp.spans.controls import derive_controls

    return derive_controls(loaded.tokenizer, derive_safety_spans(loaded.tokenizer))


def _items(loaded, cfg: ExtractConfig, generate: GenerateConfig, records, out: Path, progress: bool):
    """The continuations to extract, where they came from, and the config file recorded beside them (if any)."""
    if cfg.continuations:
        return (load_jsonl(cfg.continuations), str(cfg.continuations),
                Path(cfg.continuations).with_suffix(".config.json"))
    cont_path = out.with_suffix(".continuations.jsonl")
    if cont_path.exists():  # a resumed run reuses the continuations it generated
        items = load_jsonl(cont_path)
    else:
        items = continuations_for(loaded.model, loaded.tokenizer, records, generate, progress=progress)
        save_jsonl(items, cont_path)
    return items, str(cont_path), None


def check_made_with(items, source: str, loaded, sidecar: Path | None = None) -> None:
    """Refuse continuations made with another tokenizer (their ids would be read as other tokens, silently): a
    ``sidecar`` config (``<file>.config.json`` from ``anydepth generate``) that records another one, or a row that
    does (``Continuation.tokenizer_sha256``, written by generate, corpus and extract itself; rows of older files
    have none), wherever the file came from."""
    mine = loaded.provenance().get("tokenizer_sha256")
    if not mine:
        return
    made = None
    if sidecar is not None and sidecar.exists():
        try:
            made = (json.loads(sidecar.read_text()).get("model_provenance") or {}).get("tokenizer_sha256")
        except (OSError, ValueError):
            made = None
    if made and made != mine:
        raise UserError(f"{source} was generated with another tokenizer (tokenizer_sha256 {made}, this model's is "
                        f"{mine}); regenerate the continuations with this model (anydepth generate)")
    other = next((c for c in items if c.tokenizer_sha256 and c.tokenizer_sha256 != mine), None)
    if other is not None:
        raise UserError(f"{source}: row {other.id!r} was made with another tokenizer (tokenizer_sha256 "
                        f"{other.tokenizer_sha256[:12]}…, this model's is {mine[:12]}…); its token ids would be read "
                        "as other tokens: regenerate the continuations with this model")
