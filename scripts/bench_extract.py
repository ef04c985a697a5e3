"""Benchmark packed depth extraction against a truly plain forward, a plain-causal re-encode and ADA's cache scheme.

    python scripts/bench_extract.py                      # embedded default model (qwen2.5-coder-0.5b-instruct)
    python scripts/bench_extract.py --model tiny         # quick run on a tiny random model

Every path except "plain" reads the residual stream after every layer at the Safety-Token span after each depth
(the baselines live in :mod:`interp.extract.baselines` and are tested equal to packed):

* ``packed``: one tree-masked forward per batch (mask building included), hooks on every layer;
* ``plain``: the same packed token ids with no mask, no position ids and no hooks (the floor);
* ``reencode``: one plain causal forward per depth (``is_causal`` kernels, no custom mask), rows batched;
* ``ada_scheme``: ADA's code: grow a KV cache through the response, deep-copy it at every depth, forward the span;
* ``ada_rollback``: the same with our O(1) exact rollback instead of the copy.

Each path is warmed once, then timed for ``--repeats`` rounds in alternating order; ratios use each path's
fastest round and min/median/max is printed beside them. Random token ids stand in for text. The last line is
``packed_vs_plain=<x> reencode_vs_packed=<y> ada_scheme_vs_packed=<z> ada_rollback_vs_packed=<w>``.
"""

from __future__ import annotations

import argparse

import torch

from interp.bench import ratio, spread, time_paths
from interp.extract import baselines
from interp.extract.masks import attention_layout, collate, plan_packed
from interp.extract.packed import SpanReader, parse_depths


def load(name: str, attn: str, device: str, dtype: str):
    if name == "tiny":
        from interp.testing import tiny_model

        model, tok = tiny_model("qwen2", n_layers=4, d_model=256, n_heads=8, n_kv_heads=2, d_mlp=768)
        model.set_attn_implementation(attn)
        device = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        return model.to(device), tok, "tiny-qwen2 (4 layers, d 256)"
    from interp.model.loading import load_model

    loaded = load_model(name, attn_implementation=attn, device=device, dtype=dtype)
    return loaded.model, loaded.tokenizer, loaded.model_id


def main() -> None:
    from interp.model.catalogue import DEFAULT_MODEL
    from interp.spans.derive import derive_safety_spans

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, help="model spec, or 'tiny'")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--response-len", type=int, default=500)
    ap.add_argument("--depths", default="0:500:25")
    ap.add_argument("--attn", default="sdpa", help="attention implementation for every path")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds per path, after one warm-up each")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tok, label = load(args.model, args.attn, args.device, args.dtype)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    span = list(derive_safety_spans(tok).span_ids)
    depths = parse_depths(args.depths)
    n_layers = model.config.num_hidden_layers
    g = torch.Generator().manual_seed(0)
    rows = [(torch.randint(100, len(tok) - 100, (args.prompt_len,), generator=g).tolist(),
             torch.randint(100, len(tok) - 100, (args.response_len,), generator=g).tolist())
            for _ in range(args.batch)]
    window, types = attention_layout(model.config)
    pad = tok.pad_token_id or 0
    def batch():
        return collate([plan_packed(p, r, span, depths) for p, r in rows], pad, dtype=dtype, sliding_window=window,
                       layer_types=types, device=device)

    def packed():  # hooks attached for this path only (the baselines hook the same model)
        reader = SpanReader(model, ["resid_post"], list(range(n_layers)), range(len(span)))
        try:
            return reader.run(batch())
        finally:
            reader.remove()

    plain_ids = batch().input_ids
    paths = {
        "plain": lambda: baselines.plain_forward(model, plain_ids),
        "packed": packed,
        "reencode": lambda: baselines.reencode(model, rows, span, depths),
        "ada_scheme": lambda: baselines.ada_scheme(model, rows, span, depths, copy=True),
        "ada_rollback": lambda: baselines.ada_scheme(model, rows, span, depths, copy=False),
    }
    valid = [d for d in depths if d <= args.response_len]
    reenc_tokens = sum(args.batch * (args.prompt_len + d + len(span)) for d in valid)
    print(f"model {label} on {device} ({dtype}, attn {args.attn}, {torch.get_num_threads()} threads); "
          f"B={args.batch}, prompt {args.prompt_len}, response {args.response_len}, {len(valid)} depths, "
          f"span {len(span)}; packed/plain tokens {plain_ids.numel()}, re-encode tokens {reenc_tokens}", flush=True)
    times = time_paths(paths, args.repeats, device=device, log=lambda s: print(s, flush=True))
    for name, t in times.items():
        print(f"{name:>12}: fastest {min(t):.3f} s (min/median/max {spread(t)}), "
              f"{min(t) / min(times['packed']):.3f}x packed")
    print(f"packed_vs_plain={ratio(times, 'packed', 'plain'):.3f} "
          f"reencode_vs_packed={ratio(times, 'reencode', 'packed'):.3f} "
          f"ada_scheme_vs_packed={ratio(times, 'ada_scheme', 'packed'):.3f} "
          f"ada_rollback_vs_packed={ratio(times, 'ada_rollback', 'packed'):.3f}")


if __name__ == "__main__":
    main()
