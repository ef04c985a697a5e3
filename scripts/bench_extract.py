"""Benchmark packed depth extraction against a plain forward, per-depth re-encoding and ADA's cache scheme.

    python scripts/bench_extract.py                      # embedded default model (qwen2.5-coder-0.5b-instruct)
    python scripts/bench_extract.py --model tiny         # quick run on a tiny random model

All four schemes read the residual stream after every layer at the Safety-Token span (except "plain", a
forward over exactly the packed token count with no mask and no hooks). Random token ids stand in for text.
The last line is ``packed_vs_plain=<x> reencode_vs_packed=<y> ada_scheme_vs_packed=<z>``.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

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


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    from interp.model.catalogue import DEFAULT_MODEL
    from interp.spans.derive import derive_safety_spans

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, help="model spec, or 'tiny'")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--response-len", type=int, default=500)
    ap.add_argument("--depths", default="0:500:25")
    ap.add_argument("--attn", default="sdpa", help="attention implementation for every scheme")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--repeats", type=int, default=1, help="best of this many timed runs per scheme")
    args = ap.parse_args()

    model, tok, label = load(args.model, args.attn, args.device, args.dtype)
    device = next(model.parameters()).device
    base = model.model
    spans = derive_safety_spans(tok)
    span = list(spans.span_ids)
    depths = parse_depths(args.depths)
    n_layers = len(base.layers)
    g = torch.Generator().manual_seed(0)
    rows = [(torch.randint(100, len(tok) - 100, (args.prompt_len,), generator=g).tolist(),
             torch.randint(100, len(tok) - 100, (args.response_len,), generator=g).tolist())
            for _ in range(args.batch)]
    window, types = attention_layout(model.config)
    dtype = next(model.parameters()).dtype
    pad = tok.pad_token_id or 0

    def read(plans):
        reader = SpanReader(model, ["resid_post"], list(range(n_layers)), range(len(span)))
        try:
            return reader.run(collate(plans, pad, dtype=dtype, sliding_window=window, layer_types=types,
                                      device=device))
        finally:
            reader.remove()

    def packed():
        return read([plan_packed(p, r, span, depths) for p, r in rows])

    n_tokens = max(plan_packed(p, r, span, depths).length for p, r in rows)
    plain_ids = torch.randint(100, len(tok) - 100, (args.batch, n_tokens), generator=g).to(device)

    def plain():
        with torch.no_grad():
            base(input_ids=plain_ids, use_cache=False)

    def reencode():
        for d in depths:
            read([plan_packed(p, r[:d], span, [d]) for p, r in rows])

    def ada_scheme():
        from transformers import DynamicCache

        grab: list[torch.Tensor] = []
        hooks = [blk.register_forward_hook(lambda m, a, o: grab.append(o[:, -len(span):].float().cpu()))
                 for blk in base.layers]
        try:
            with torch.no_grad():
                for p, r in rows:
                    cache, seen = DynamicCache(config=model.config), 0
                    for d in depths:
                        new = (p + r[:d])[seen:]
                        if new:
                            base(input_ids=torch.tensor([new], device=device), cache=cache, use_cache=True)
                            seen += len(new)
                        forked = copy.deepcopy(cache)
                        base(input_ids=torch.tensor([span], device=device), cache=forked, use_cache=True)
                        grab.clear()
        finally:
            for hd in hooks:
                hd.remove()

    plain()  # warm-up (one-off allocations, kernel selection)
    times = {}
    for name, fn in (("plain", plain), ("packed", packed), ("ada_scheme", ada_scheme), ("reencode", reencode)):
        times[name] = timed(fn, args.repeats)
        print(f"{name:>10}: {times[name]:.3f} s", flush=True)
    reenc_tokens = sum(args.batch * (args.prompt_len + d + len(span)) for d in depths)
    print(f"model {label} on {device} ({dtype}, attn {args.attn}, {torch.get_num_threads()} threads); "
          f"B={args.batch}, prompt {args.prompt_len}, response {args.response_len}, {len(depths)} depths, "
          f"span {len(span)}; packed/plain tokens per row {n_tokens}, re-encode tokens {reenc_tokens}")
    print(f"packed_vs_plain={times['packed'] / times['plain']:.3f} "
          f"reencode_vs_packed={times['reencode'] / times['packed']:.3f} "
          f"ada_scheme_vs_packed={times['ada_scheme'] / times['packed']:.3f}")


if __name__ == "__main__":
    main()
