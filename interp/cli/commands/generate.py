"""``anydepth generate``: the model's own continuations (prefill attack / own answers) saved as JSONL with ids."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from interp.cli.naming import check_out, file_slug
from interp.config import add_arguments, from_namespace, to_dict


def run_config(**configs) -> dict:
    """JSON-ready record of several dataclass configs (saved beside results)."""
    return {name: {"config_class": type(cfg).__name__, **to_dict(cfg)} for name, cfg in configs.items()}


def short_hash(payload: dict, length: int = 12) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:length]


def save_json(payload: dict, path: Path) -> Path:
    """Write ``payload`` as JSON atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def register(subparsers) -> None:
    from interp.generate.continuations import GenerateConfig
    from interp.model.loading import ModelConfig

    p = subparsers.add_parser("generate", help="generate continuations (prefill attack / own answers) as JSONL")
    add_arguments(p, ModelConfig)
    add_arguments(p, GenerateConfig)
    p.add_argument("--out", default=None,
                   help="JSONL path (default activations/continuations/<model>-<data>-<mode>-<hash>.jsonl)")
    p.set_defaults(func=run)


def run(args) -> int:
    from interp.generate.continuations import (
        GenerateConfig,
        continuations_for,
        load_records,
        resolve_gen_dtype,
        save_jsonl,
    )
    from interp.model.loading import ModelConfig, load_model

    model_cfg, cfg = from_namespace(ModelConfig, args), from_namespace(GenerateConfig, args)
    cfg.validate()
    configs = run_config(model=model_cfg, generate=cfg)
    out = Path(args.out) if args.out else Path("activations") / "continuations" / (
        f"{file_slug(model_cfg.model)}-{file_slug(cfg.data)}-{cfg.mode}-{short_hash(configs)}.jsonl")
    check_out(out, "file")  # before the data are read or the model loads
    records = load_records(cfg.data, cfg.split, cfg.limit, cfg.seed)
    loaded = load_model(model_cfg)
    skipped: list[str] = []
    items = continuations_for(loaded.model, loaded.tokenizer, records, cfg, skipped=skipped)
    if not items:
        from interp import UserError

        raise UserError(f"no continuations: all {len(skipped)} records exceed the model context (--too-long skip)")
    save_jsonl(items, out)
    decoded = resolve_gen_dtype(cfg.gen_dtype, loaded.device)  # what `auto` / `model` came to on this machine
    decoded = str(loaded.dtype).removeprefix("torch.") if decoded == "model" else decoded
    save_json({**configs, "model_provenance": loaded.provenance(), "gen_dtype_resolved": decoded,
               "skipped_too_long": skipped},
              out.with_suffix(".config.json"))
    if skipped:
        print(f"skipped {len(skipped)} record(s) longer than the model context (listed in the config JSON)")
    finished = sum(c.finished for c in items)
    print(f"wrote {len(items)} continuations ({finished} ended their turn) to {out}")
    return 0
