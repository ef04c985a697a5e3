"""Small helpers shared by the tutorial notebooks in ``notebooks/``: model choice, demo subsets, inline figures.

The notebooks run on a tiny random model by default (fast, for CI; its numbers mean nothing) and on a real
model when ``ANYDEPTH_NOTEBOOK_MODEL`` names one (a catalogue name such as ``qwen2.5-coder-0.5b-instruct``, a
local path or a hub id).
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import torch

from interp import UserError
from interp.model.loading import LoadedModel

MODEL_ENV = "ANYDEPTH_NOTEBOOK_MODEL"
TINY = "tiny"


def model_name() -> str:
    """The notebook model: ``$ANYDEPTH_NOTEBOOK_MODEL`` or ``"tiny"``."""
    return os.environ.get(MODEL_ENV, TINY).strip() or TINY


def is_tiny(name: str) -> bool:
    return name == TINY


def pick_model(name: str | None = None, **load_options) -> LoadedModel:
    """``"tiny"``: a random 4-layer Qwen2-style model with a ChatML template (no download, float32, CPU);
    anything else goes to :func:`interp.model.loading.load_model` with ``load_options`` (device, dtype, ...)."""
    name = model_name() if name is None else name
    if not is_tiny(name):
        from interp.model.loading import load_model

        return load_model(name, **load_options)
    from interp.testing import tiny_model

    model, tok = tiny_model("qwen2", n_layers=4)
    cfg = model.config
    return LoadedModel(model=model, tokenizer=tok, model_id="tiny-qwen2", weights_sha256=None, source="tiny",
                       n_layers=cfg.num_hidden_layers, d_model=cfg.hidden_size, device="cpu", dtype=torch.float32)


def demo_pairs(n_pairs: int, seed: int = 0) -> list:
    """``n_pairs`` seeded topic pairs of the built-in demo set: each harmful request with its benign twin
    (balanced classes, order kept)."""
    from interp.data import load_dataset

    records = load_dataset("demo")
    pair_ids = sorted({r.meta.get("pair_id") for r in records if r.meta.get("pair_id")})
    if not 1 <= n_pairs <= len(pair_ids):
        raise UserError(f"n_pairs must lie in 1..{len(pair_ids)} (the demo set's topic pairs), got {n_pairs}")
    keep = set(random.Random(seed).sample(pair_ids, n_pairs))
    return [r for r in records if r.meta.get("pair_id") in keep]


def quick_probeset(loaded: LoadedModel, workdir: str | Path, records: list, *, max_new_tokens: int = 24,
                   depths: str = "0:24:4", folds: int = 5):
    """Continuations → packed extraction → :func:`interp.train` in ``workdir`` (what notebook 1 walks through
    step by step). Returns ``(ProbeSet, continuations, store path)``."""
    from interp.extract.packed import extract_to_store
    from interp.generate.continuations import GenerateConfig, continuations_for, save_jsonl
    from interp.probes import ProbeSet
    from interp.spans.derive import derive_safety_spans

    workdir = Path(workdir)
    items = continuations_for(loaded.model, loaded.tokenizer, records,
                              GenerateConfig(mode="auto", max_new_tokens=max_new_tokens), progress=False)
    save_jsonl(items, workdir / "continuations.jsonl")
    store = workdir / "store.h5"
    extract_to_store(loaded.model, loaded.tokenizer, items, store, spans=derive_safety_spans(loaded.tokenizer),
                     depths=depths, layers=list(range(loaded.n_layers)), provenance=loaded.provenance(),
                     progress=False)
    import numpy as np

    from interp.extract.packed import parse_depths
    from interp.probes.protocol import SplitConfig, content_groups, three_way_split

    # the guard checks every `stride` tokens: calibrate for the store's depth step; few pairs → fewer folds
    stride = min([d for d in parse_depths(depths) if d > 0] or [1])
    groups = content_groups([r.prompt for r in records], [(r.meta or {}).get("pair_id") for r in records])
    y = np.array([r.label == "harmful" for r in records], int)
    train = three_way_split(groups, y, SplitConfig(), seed=0) == "train"
    folds = max(2, min(folds, *(len(set(groups[train & (y == v)])) for v in (0, 1))))
    from interp.probes.run import train
    from interp.probes.train import TrainConfig

    train(store, TrainConfig(folds=folds, n_boot=50, stride=stride), out=workdir / "probes", progress=False)
    return ProbeSet.load(workdir / "probes", expect_provenance=loaded.provenance()), items, store


def tiny_model_dir(workdir: str | Path) -> Path:
    """The tiny model saved as a model folder under ``workdir`` (what the study's stages load by path)."""
    from interp.testing import tiny_model

    folder = Path(workdir) / "tiny"
    if not (folder / "config.json").exists():
        model, tok = tiny_model("qwen2", n_layers=2)
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
    return folder


def show(fig) -> None:
    """Display a matplotlib figure inline as a PNG (works under any backend, Agg included) and close it."""
    import matplotlib.pyplot as plt
    from IPython.display import Image, display

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    display(Image(data=buf.getvalue(), format="png"))


def show_png(path: str | Path | list) -> None:
    """Display a PNG written by the package's plot functions (a list of paths: its ``.png``)."""
    from IPython.display import Image, display

    if isinstance(path, (list, tuple)):
        path = next(p for p in path if str(p).endswith(".png"))
    display(Image(filename=str(path)))
