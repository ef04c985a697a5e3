"""``anydepth extract``: Safety-Token activations at every depth (one packed forward per response) into HDF5."""

from __future__ import annotations

from pathlib import Path

from interp.config import add_arguments, from_namespace


def register(subparsers) -> None:
    from interp.extract.packed import ExtractConfig
    from interp.generate.continuations import GenerateConfig
    from interp.model.loading import ModelConfig

    p = subparsers.add_parser("extract", help="extract depth-indexed Safety-Token activations to an HDF5 store")
    add_arguments(p, ModelConfig)
    add_arguments(p, GenerateConfig, skip=("too_long",))  # --too-long comes from ExtractConfig, same rule
    add_arguments(p, ExtractConfig)
    p.set_defaults(func=run)


def run_extract(model_cfg, gen_cfg, cfg, progress: bool = True):
    """Load the model, get continuations (file, dataset responses or generated), extract, save the config."""
    import interp
    from interp.cli.commands.generate import run_config, save_json, short_hash
    from interp.cli.naming import file_slug
    from interp.extract import distributed
    from interp.extract.packed import parse_depths, parse_layers
    from interp.generate.continuations import continuations_for, load_jsonl, load_records, save_jsonl
    from interp.model.loading import load_model
    from interp.spans.derive import derive_safety_spans

    depths = parse_depths(cfg.depths, cfg.answer_length)  # 'end' = the answer length; checked before any work
    configs = run_config(model=model_cfg, generate=gen_cfg, extract=cfg)
    data_name = Path(cfg.continuations).stem if cfg.continuations else gen_cfg.data
    out = Path(cfg.out) if cfg.out else Path("activations") / file_slug(model_cfg.model) / (
        f"{file_slug(data_name)}-{short_hash(configs)}.h5")
    records = None if cfg.continuations else load_records(gen_cfg.data, gen_cfg.split, gen_cfg.limit, gen_cfg.seed)
    loaded = load_model(distributed.rank_model_config(model_cfg))
    spans = derive_safety_spans(loaded.tokenizer)
    sidecar = None
    if cfg.continuations:
        items, source = load_jsonl(cfg.continuations), str(cfg.continuations)
        sidecar = Path(cfg.continuations).with_suffix(".config.json")
    else:
        cont_path = out.with_suffix(".continuations.jsonl")
        if cont_path.exists():  # a resumed run reuses the continuations it generated
            items = load_jsonl(cont_path)
        else:
            items = continuations_for(loaded.model, loaded.tokenizer, records, gen_cfg, progress=progress)
            save_jsonl(items, cont_path)
        source = str(cont_path)
    _check_made_with(items, source, loaded, sidecar)
    layers = parse_layers(cfg.layers, loaded.n_layers)
    provenance = {**loaded.provenance(), "package_version": interp.__version__, "continuations": source,
                  "config": configs}
    result = distributed.extract_auto(
        loaded.model, loaded.tokenizer, items, out, spans=spans, depths=depths, layers=layers, hooks=cfg.hooks,
        positions=cfg.positions, storage_dtype=cfg.store_dtype, batch_size=cfg.batch_size,
        too_long=cfg.too_long, provenance=provenance, progress=progress, answer_length=cfg.answer_length)
    if distributed.is_main_rank():  # under torchrun only rank 0 writes the shared config file
        save_json({**configs, "model_provenance": loaded.provenance(), "store": str(out),
                   "continuations": source}, out.with_suffix(".config.json"))
    return result


def _check_made_with(items, source: str, loaded, sidecar: Path | None = None) -> None:
    """Refuse continuations made with another tokenizer (their ids would be read as other tokens, silently): a
    ``sidecar`` config (``<file>.config.json`` from ``anydepth generate``) that records another one, or a row that
    does (``Continuation.tokenizer_sha256``, written by generate, corpus and extract itself; rows of older files
    have none), wherever the file came from."""
    import json

    from interp import UserError

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


def run(args) -> int:
    from interp.extract.packed import ExtractConfig
    from interp.generate.continuations import GenerateConfig
    from interp.model.loading import ModelConfig

    gen_cfg = from_namespace(GenerateConfig, args)
    gen_cfg.validate()
    result = run_extract(from_namespace(ModelConfig, args), gen_cfg, from_namespace(ExtractConfig, args))
    rate = result.n_tokens / max(result.seconds, 1e-9)
    print(f"wrote {result.path}: {result.n_examples} examples ({result.n_computed} computed now, "
          f"{rate:.0f} tok/s)")
    return 0
