"""The generation stage: the model's own continuations of a dataset, saved as JSONL with their config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from interp import UserError
from interp.config import run_config, save_json, short_hash
from interp.generate.continuations import (
    GenerateConfig,
    continuations_for,
    load_records,
    resolve_gen_dtype,
    save_jsonl,
)
from interp.model.loading import LoadedModel, ModelConfig, as_loaded, model_config_of
from interp.naming import check_out, file_slug
from interp.results import Result


@dataclass
class GenerateResult(Result):
    """Where the continuations went and how many ended their turn."""

    kind = "generate"
    path: Path
    n_items: int
    n_finished: int
    skipped_too_long: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"wrote {self.n_items} continuations ({self.n_finished} ended their turn) to {self.path}"]
        if self.skipped_too_long:
            lines.insert(0, f"skipped {len(self.skipped_too_long)} record(s) longer than the model context (listed "
                            "in the config JSON)")
        return "\n".join(lines)


def default_out(model_cfg: ModelConfig, cfg: GenerateConfig) -> Path:
    configs = run_config(model=model_cfg, generate=cfg)
    return Path("activations") / "continuations" / (
        f"{file_slug(model_cfg.model)}-{file_slug(cfg.data)}-{cfg.mode}-{short_hash(configs)}.jsonl")


def make_continuations(model: ModelConfig | LoadedModel | str, cfg: GenerateConfig, *, out: str | Path | None = None,
             progress: bool = True) -> GenerateResult:
    """Continue ``cfg.data``'s prompts with ``model`` and save them (``out`` or a config-addressed default) with a
    ``.config.json`` beside them recording the model, the options and the dtype the decoding really used."""
    cfg.validate()
    if cfg.max_new_tokens < 1:
        raise UserError("--max-new-tokens 0 generates nothing: every own answer would be empty and every prefill "
                        "its opener alone; give --max-new-tokens 1 or more")
    model_cfg = model_config_of(model)
    out = check_out(Path(out) if out else default_out(model_cfg, cfg), "file")  # before the data or the model
    records = load_records(cfg.data, cfg.split, cfg.limit, cfg.seed)
    loaded = as_loaded(model)
    skipped: list[str] = []
    items = continuations_for(loaded.model, loaded.tokenizer, records, cfg, progress=progress, skipped=skipped)
    if not items:
        raise UserError(f"no continuations: all {len(skipped)} records exceed the model context (--too-long skip)")
    save_jsonl(items, out)
    decoded = resolve_gen_dtype(cfg.gen_dtype, loaded.device)  # what `auto` / `model` came to on this machine
    decoded = str(loaded.dtype).removeprefix("torch.") if decoded == "model" else decoded
    save_json({**run_config(model=model_cfg, generate=cfg), "model_provenance": loaded.provenance(),
               "gen_dtype_resolved": decoded, "skipped_too_long": skipped}, out.with_suffix(".config.json"))
    return GenerateResult(out, len(items), sum(c.finished for c in items), skipped)
