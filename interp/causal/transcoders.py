"""Per-layer transcoders (MLP input -> MLP output) trained by our own loop, stored in sae-lens format.

sae-lens 6.54 runs ``Transcoder`` s but has no trainer, so we train one with a plain torch loop: loss =
batch FVU (squared error over the output's total variance) + ``l1_coeff`` * mean over tokens of
sum_f a_f * ||W_dec[f]|| / rms(output). Files are exactly what ``SAE.load_from_disk`` reads (``cfg.json`` +
``sae_weights.safetensors``), plus our ``training.json`` (config, data, metrics) beside them.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from interp import UserError
from interp.model.hooks import (
    Inputs,
    body,
    forward_until_stop,
    hooks_attached,
    mlp_in,
    mlp_out,
    run_with_hooks,
    stop,
)

WEIGHTS, CFG, TRAINING = "sae_weights.safetensors", "cfg.json", "training.json"


@dataclass
class TranscoderTrainConfig:
    """How to train one transcoder."""

    expansion: int = field(default=4, metadata={"help": "d_sae = expansion * d_model"})
    l1_coeff: float = field(default=3e-3, metadata={"help": "sparsity penalty on decoder-norm-weighted activations"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    steps: int = field(default=1000, metadata={"help": "optimiser steps"})
    batch_tokens: int = field(default=512, metadata={"help": "tokens per step"})
    l1_warmup: float = field(default=0.1, metadata={"help": "fraction of steps over which l1 ramps up"})
    seed: int = field(default=0, metadata={"help": "random seed"})


def _right_padded(model, rows: list[list[int]]) -> Inputs:
    """Token rows as one right-padded batch (ids and attention mask) on the model's device."""
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, : len(r)], mask[j, : len(r)] = torch.tensor(r), 1
    device = next(model.parameters()).device
    return Inputs(ids.to(device), mask.to(device))


def _budget(rows: list[list[int]], max_tokens: int | None) -> list[list[int]]:
    """Rows in order until ``max_tokens`` tokens (the last row cut to fit)."""
    if not max_tokens:
        return rows
    out, n = [], 0
    for r in rows:
        if n >= max_tokens:
            break
        out.append(r[: max_tokens - n])
        n += len(out[-1])
    return out


@torch.no_grad()
def collect_mlp_io_layers(model, token_rows: Iterable[list[int]], layers: Sequence[int], batch_size: int = 8,
                          max_tokens: int | None = None) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """MLP input and output at each layer for every real token -> ``{layer: ([N, d_in], [N, d_out])}``.

    One pass per batch for all layers, stopped after the deepest layer's MLP; rows are batched by length
    (less padding) and returned in their original order, up to ``max_tokens`` tokens.
    """
    rows = _budget([list(r) for r in token_rows if len(r)], max_tokens)
    if not rows:
        raise UserError("no tokens to collect MLP activations from")
    layers = sorted(set(int(L) for L in layers))
    base = body(model)
    per_row: dict[str, list] = {s: [None] * len(rows) for L in layers for s in (mlp_in(L), mlp_out(L))}
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    for start in tqdm(range(0, len(rows), batch_size), desc=f"collect layers {layers}", leave=False):
        idx = order[start: start + batch_size]
        inp = _right_padded(model, [rows[i] for i in idx])
        cache: dict[str, torch.Tensor] = {}

        def saver(name: str, cache=cache):
            def fn(x: torch.Tensor) -> None:
                cache[name] = x.detach()
            return fn

        hooks = [(name, saver(name)) for name in per_row] + [(mlp_out(layers[-1]), stop)]
        with hooks_attached(base, hooks):
            forward_until_stop(base, **inp.kwargs(), use_cache=False)
        for j, i in enumerate(idx):
            for name in per_row:
                per_row[name][i] = cache[name][j, : len(rows[i])].float().cpu()
    return {L: (torch.cat(per_row[mlp_in(L)]), torch.cat(per_row[mlp_out(L)])) for L in layers}


def collect_mlp_io(model, token_rows: Iterable[list[int]], layer: int, batch_size: int = 8,
                   max_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MLP input and output at ``layer`` for every real token of the rows -> ``([N, d_in], [N, d_out])``."""
    return collect_mlp_io_layers(model, token_rows, [layer], batch_size, max_tokens)[layer]


def new_transcoder(d_in: int, d_sae: int, d_out: int, metadata: dict | None = None, dtype: str = "float32",
                   device: str = "cpu"):
    """An untrained sae-lens ``Transcoder`` with our metadata (hook names, layer, model)."""
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.transcoder import Transcoder, TranscoderConfig

    cfg = TranscoderConfig(d_in=d_in, d_sae=d_sae, d_out=d_out, dtype=dtype, device=device,
                           apply_b_dec_to_input=False, metadata=SAEMetadata(**(metadata or {})))
    return Transcoder(cfg)


def fvu(y: torch.Tensor, y_hat: torch.Tensor) -> float:
    """Fraction of variance unexplained: sum ||y - ŷ||² / sum ||y - mean(y)||²."""
    y, y_hat = y.double(), y_hat.double()
    return float(((y - y_hat) ** 2).sum() / ((y - y.mean(0)) ** 2).sum().clamp_min(1e-30))


def train_transcoder(x: torch.Tensor, y: torch.Tensor, cfg: TranscoderTrainConfig, metadata: dict | None = None,
                     device: str = "cpu", log_every: int = 100) -> tuple[object, dict]:
    """Train on paired MLP input / output rows; returns the transcoder (on CPU) and a training log."""
    if len(x) != len(y) or len(x) < 2:
        raise UserError("need at least two paired MLP input/output rows to train a transcoder")
    torch.manual_seed(cfg.seed)
    d_in, d_out = x.shape[1], y.shape[1]
    tc = new_transcoder(d_in, cfg.expansion * d_in, d_out, metadata, device=device)
    x, y = x.to(device), y.to(device)
    var = ((y - y.mean(0)) ** 2).sum(-1).mean().clamp_min(1e-12)
    with torch.no_grad():  # output bias at the mean, small decoder rows, encoder = scaled random projection
        tc.b_dec.copy_(y.mean(0))
        tc.W_dec.mul_(0.1 * var.sqrt() / tc.W_dec.norm(dim=1, keepdim=True))
        tc.W_enc.mul_(1.0 / (x.norm(dim=1).mean() * tc.W_enc.norm(dim=0, keepdim=True)).clamp_min(1e-12))
    opt = torch.optim.Adam(tc.parameters(), lr=cfg.lr)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    warm = max(1, int(cfg.l1_warmup * cfg.steps))
    log, t0 = [], time.time()
    for step in tqdm(range(cfg.steps), desc="train transcoder", leave=False):
        idx = torch.randint(0, len(x), (min(cfg.batch_tokens, len(x)),), generator=gen).to(device)
        acts = tc.encode(x[idx])
        y_hat = tc.decode(acts)
        mse = ((y_hat - y[idx]) ** 2).sum(-1).mean() / var
        sparsity = (acts * tc.W_dec.norm(dim=1)).sum(-1).mean() / var.sqrt()
        loss = mse + cfg.l1_coeff * min(1.0, (step + 1) / warm) * sparsity
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % log_every == 0 or step == cfg.steps - 1:
            log.append({"step": step, "fvu": float(mse.detach()), "l0": float((acts > 0).float().sum(-1).mean()),
                        "loss": float(loss.detach())})
    tc = tc.to("cpu")
    tc.cfg.device = "cpu"
    return tc, {"log": log, "seconds": time.time() - t0, "n_tokens": len(x)}


def save_transcoder(tc, path: str | Path, training: dict | None = None) -> Path:
    """Write sae-lens files (+ ``training.json``) into ``path`` atomically (a temp folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tc.save_model(tmp)
    if training is not None:
        (tmp / TRAINING).write_text(json.dumps(training, indent=2, sort_keys=True, default=str) + "\n")
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


def load_transcoder(path: str | Path, device: str = "cpu"):
    """Load a transcoder written by :func:`save_transcoder` (or any sae-lens transcoder folder)."""
    from sae_lens import SAE

    path = Path(path)
    if not (path / CFG).is_file() or not (path / WEIGHTS).is_file():
        raise UserError(f"{path}: not a transcoder folder (needs {CFG} and {WEIGHTS}); train one with "
                        "`anydepth transcoders train`")
    return SAE.load_from_disk(path, device=device)


def splice_hooks(tc, layer: int, edit=None, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None
                 ) -> dict:
    """Hooks replacing the MLP output at ``layer`` by the transcoder's reconstruction.

    With ``edit`` (a function of the feature activations ``[N, d_sae]``) and positions, only those positions
    change, and they keep the transcoder's error term: ``out + decode(edit(a)) - decode(a)``, so an identity
    edit leaves the model exactly as it was (up to float rounding). Without ``edit``, every position is
    replaced by the plain reconstruction (for spliced-loss evaluation).
    """
    saved: dict[str, torch.Tensor] = {}

    def grab(x: torch.Tensor) -> None:
        saved["in"] = x

    def put(out: torch.Tensor) -> torch.Tensor:
        tcx = tc.to(out.device)
        with torch.no_grad():
            if edit is None:
                return tcx(saved["in"].to(tcx.W_enc.dtype)).to(out.dtype)
            acts = tcx.encode(saved["in"][rows, cols].to(tcx.W_enc.dtype))
            delta = (tcx.decode(edit(acts)) - tcx.decode(acts)).to(out.dtype)
        out = out.clone()
        out[rows, cols] = out[rows, cols] + delta
        return out

    return {mlp_in(layer): grab, mlp_out(layer): put}


def token_loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean next-token cross-entropy over real (non-padding) target tokens."""
    m = (mask[:, 1:] * mask[:, :-1]).bool()
    lp = torch.log_softmax(logits[:, :-1][m].double(), -1)  # only real targets: [N, V]
    return float(-lp.gather(-1, ids[:, 1:][m][:, None]).mean())


@torch.no_grad()
def evaluate_transcoders(model, transcoders: dict[int, object], token_rows: list[list[int]], batch_size: int = 8,
                         max_tokens: int | None = None) -> dict[int, dict]:
    """Per layer: FVU, L0, dead fraction, and next-token loss clean / spliced / MLP zero-ablated on held-out rows.

    The clean forward of each batch gives both the clean loss and every layer's MLP input / output.
    """
    rows = _budget([list(r) for r in token_rows if len(r)], max_tokens)
    sites = tuple(s for L in transcoders for s in (mlp_in(L), mlp_out(L)))
    io: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
    variants: dict[str, dict | None] = {"clean": None}
    for L, tc in transcoders.items():
        variants[f"spliced_{L}"] = splice_hooks(tc, L)
        variants[f"zero_{L}"] = {mlp_out(L): lambda o: torch.zeros_like(o)}
    losses: dict[str, list[float]] = {k: [] for k in variants}
    weights = []
    for i in tqdm(range(0, len(rows), batch_size), desc=f"evaluate transcoders {list(transcoders)} "
                  f"({len(variants)} forwards per batch)", leave=False):
        inp = _right_padded(model, rows[i: i + batch_size])
        real = inp.attention_mask.bool()
        for name, hooks in variants.items():
            logits, cache = run_with_hooks(model, inp, hooks, sites if name == "clean" else ())
            losses[name].append(token_loss(logits.cpu(), inp.input_ids.cpu(), inp.attention_mask.cpu()))
            for site, value in cache.items():
                io[site].append(value[real].float().cpu())
        mask = inp.attention_mask.cpu()
        weights.append(int((mask[:, 1:] * mask[:, :-1]).sum()))
    w = torch.tensor(weights, dtype=torch.float64)
    mean = {k: float((torch.tensor(v, dtype=torch.float64) * w).sum() / w.sum()) for k, v in losses.items()}
    out = {}
    for L, tc in transcoders.items():
        x, y = torch.cat(io[mlp_in(L)]), torch.cat(io[mlp_out(L)])
        acts = tc.encode(x.to(tc.W_enc.dtype))
        recon = tc.decode(acts)
        clean, spliced, zero = mean["clean"], mean[f"spliced_{L}"], mean[f"zero_{L}"]
        out[L] = {"fvu": fvu(y, recon), "l0": float((acts > 0).float().sum(-1).mean()),
                  "dead_fraction": float(((acts > 0).sum(0) == 0).float().mean()), "n_tokens": len(x),
                  "loss_clean": clean, "loss_spliced": spliced, "loss_zero_ablated": zero,
                  "delta_loss": spliced - clean,
                  "loss_recovered": loss_recovered(clean, spliced, zero)}
    return out


def loss_recovered(clean: float, spliced: float, zero: float, min_gap: float = 1e-3) -> float | None:
    """(zero-ablated - spliced) / (zero-ablated - clean); ``None`` when zero-ablating the MLP moves the loss by
    less than ``min_gap`` nats (the ratio is then noise: seen for single mid-depth MLPs of Qwen-0.5B)."""
    gap = zero - clean
    return (zero - spliced) / gap if gap >= min_gap else None


def evaluate_transcoder(model, tc, layer: int, token_rows: list[list[int]], batch_size: int = 8,
                        max_tokens: int | None = None) -> dict:
    """:func:`evaluate_transcoders` for one transcoder."""
    return evaluate_transcoders(model, {layer: tc}, token_rows, batch_size, max_tokens)[layer]


def transcoder_layer(tc) -> int:
    """The layer a transcoder reads, from its sae-lens ``hook_name`` (``blocks.L.mlp.hook_in``)."""
    m = re.match(r"blocks\.(\d+)\.", str(tc.cfg.metadata.hook_name or ""))
    if not m:
        raise UserError("transcoder metadata has no hook_name like blocks.L.mlp.hook_in")
    return int(m.group(1))


def list_transcoders(root: str | Path) -> list[dict]:
    """Every transcoder folder under ``root`` with its hook, size and stored metrics."""
    out = []
    for cfg_path in sorted(Path(root).rglob(CFG)):
        folder = cfg_path.parent
        if folder.name.endswith(".tmp") or not (folder / WEIGHTS).is_file():
            continue
        cfg = json.loads(cfg_path.read_text())
        train = json.loads((folder / TRAINING).read_text()) if (folder / TRAINING).is_file() else {}
        meta = cfg.get("metadata", {})
        out.append({"path": str(folder), "architecture": cfg.get("architecture"), "d_in": cfg.get("d_in"),
                    "d_sae": cfg.get("d_sae"), "hook_name": meta.get("hook_name"), "model": meta.get("model_name"),
                    "metrics": train.get("metrics", {})})
    return out


def describe_transcoders(root: str | Path) -> str:
    """:func:`list_transcoders` as lines (what ``anydepth transcoders list`` prints)."""
    items = list_transcoders(root)
    if not items:
        return f"no transcoders under {root} (train some with `anydepth transcoders train`)"
    lines = []
    for it in items:
        m = it["metrics"]
        fv = f"FVU {m['fvu']:.3f} L0 {m['l0']:.1f} Δloss {m['delta_loss']:+.4f}" if m else "no metrics"
        lines.append(f"{it['path']}: {it['architecture']} {it['hook_name']} d_in {it['d_in']} d_sae {it['d_sae']}; {fv}")
    return "\n".join(lines)
