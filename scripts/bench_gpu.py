#!/usr/bin/env python
"""Benchmark packed extraction and guard checks on a random-init model (the GPU reference table: extraction and checks).

    python scripts/bench_gpu.py                       # Llama-3.1-8B shape, bf16, on the first GPU
    python scripts/bench_gpu.py --shape tiny          # 2-layer toy shape on CPU (a smoke test, not a benchmark)
    python scripts/bench_gpu.py --device-map auto     # split the model over all visible GPUs (accelerate)

Extraction of B responses (prompt P, response R, D depths, span h) by the paths of
:mod:`interp.extract.baselines` (tested equal to packed): a plain causal re-encode per depth; ADA's scheme (grow
a KV cache through the response, deep-copy it at each depth, forward the span on the copy) and the same with the
exact O(1) rollback; packed (one tree-masked forward with hooks reading every layer at the span positions); and
a truly plain forward over the packed token ids (no mask, no position ids, no hooks). Guard (batch 1): one decode
step, an ADA-LP check (span forward + exact rollback), the same with early exit at the middle layer, and a
piggybacked decode+check step, over caches of the given context lengths. Every path is warmed once and timed in
``--repeats`` rounds of alternating order (:mod:`interp.bench`); the fastest round counts, min/median/max is
printed. The last line is ``packed_vs_plain=<x> reencode_vs_packed=<y> ada_scheme_vs_packed=<z>
ada_rollback_vs_packed=<w>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

SHAPES = {  # name -> LlamaConfig kwargs
    "llama3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                        num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192),
    "llama3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                        num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, max_position_embeddings=4096),
}
TINY_DEFAULTS = dict(batch=4, prompt_len=16, response_len=64, depths="0:60:10", contexts=[64, 256], repeats=2)


def build_model(shape: str, dtype: torch.dtype, device: str, device_map: str | None, attn: str):
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(**SHAPES[shape], tie_word_embeddings=False)
    torch.manual_seed(0)
    if device_map:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=attn)
        model.to_empty(device="cpu")
        model.apply(model._init_weights)
        from interp.extract.distributed import dispatch_across_gpus

        model = dispatch_across_gpus(model, dtype=dtype)
    else:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=attn)
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default=None, choices=sorted(SHAPES), help="default: llama3.1-8b on GPU, tiny on CPU")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    ap.add_argument("--device-map", default=None, help="e.g. auto: split over GPUs with accelerate")
    ap.add_argument("--attn", default="sdpa", help="attention implementation (sdpa or eager)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--response-len", type=int, default=512)
    ap.add_argument("--depths", default="0:500:25")
    ap.add_argument("--span-len", type=int, default=5, help="span tokens h (synthetic ids; Llama-3's is 5)")
    ap.add_argument("--contexts", type=int, nargs="+", default=[600, 4000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-reencode", action="store_true", help="skip the slowest method")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()

    from interp.bench import spread, time_paths
    from interp.extract import baselines
    from interp.extract.masks import attention_layout, collate, plan_packed
    from interp.extract.packed import SpanReader, parse_depths
    from interp.guard.checks import Checker
    from interp.guard.types import GuardConfig
    from interp.model.kvcache import cache_kwarg, mark, new_cache, rollback
    from interp.probes.probeset import ProbeSet
    from interp.spans.derive import derive_safety_spans
    from interp.testing import tiny_tokenizer

    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda") or args.device.startswith("cuda")
    device = ("cuda" if args.device == "auto" else args.device) if cuda else "cpu"
    shape = args.shape or ("llama3.1-8b" if cuda else "tiny")
    if shape == "tiny":
        given = {k: v for k, v in vars(args).items()}
        for k, v in TINY_DEFAULTS.items():
            if given[k] == ap.get_default(k):
                setattr(args, k, v)
    dtype = {"auto": torch.bfloat16 if cuda else torch.float32, "bfloat16": torch.bfloat16,
             "float16": torch.float16, "float32": torch.float32}[args.dtype]
    t0 = time.perf_counter()
    model = build_model(shape, dtype, device, args.device_map, args.attn)
    dev = next(model.parameters()).device
    n_layers, d_model = model.config.num_hidden_layers, model.config.hidden_size
    n_params = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; shape {shape} ({n_layers} layers, d {d_model}, {n_params / 1e9:.2f} B params), "
          f"{str(dtype).removeprefix('torch.')}, attn {args.attn}; built in {time.perf_counter() - t0:.1f} s")

    tok = tiny_tokenizer("llama3")
    # a synthetic span of h ids (random model: content is irrelevant), probe at its last token
    spans = dataclasses.replace(derive_safety_spans(tok), span_ids=tuple(range(100, 100 + args.span_len)),
                                probe_index=args.span_len - 1)
    span, h = list(spans.span_ids), len(spans.span_ids)
    depths = parse_depths(args.depths)
    B, P, R = args.batch, args.prompt_len, args.response_len
    g = torch.Generator().manual_seed(0)
    vocab = min(model.config.vocab_size, 400)
    rows = [(torch.randint(0, vocab, (P,), generator=g).tolist(), torch.randint(0, vocab, (R,), generator=g).tolist())
            for _ in range(B)]
    plans = [plan_packed(p, r, span, depths) for p, r in rows]
    window, types = attention_layout(model.config)
    batch = collate(plans, 0, dtype=dtype, sliding_window=window, layer_types=types, device=dev)
    valid = [d for d in depths if d <= R]
    n_tok = batch.n_tokens
    print(f"extraction: B={B}, P={P}, R={R}, {len(depths)} depths {depths[0]}..{depths[-1]}, h={h}: "
          f"{n_tok} packed tokens; re-encoding forwards {B * sum(P + d + h for d in valid)} tokens")
    results: dict = {"device": name, "shape": shape, "dtype": str(dtype), "B": B, "P": P, "R": R,
                     "depths": depths, "h": h, "packed_tokens": n_tok}

    def packed():  # hooks attached for this path only (the baselines hook the same model)
        reader = SpanReader(model, ["resid_post"], list(range(n_layers)), list(range(h)))
        try:
            return reader.run(batch)
        finally:
            reader.remove()

    paths = {
        "plain": lambda: baselines.plain_forward(model, batch.input_ids),
        "packed": packed,
        "ada_scheme": lambda: baselines.ada_scheme(model, rows, span, depths, copy=True),
        "ada_rollback": lambda: baselines.ada_scheme(model, rows, span, depths, copy=False),
    }
    if not args.skip_reencode:
        paths["reencode"] = lambda: baselines.reencode(model, rows, span, depths)
    times = time_paths(paths, args.repeats, device=dev, log=lambda s: print(s, flush=True))
    # agreement at the last layer (float32 should be ~1e-6; bf16 drifts through many layers)
    last = n_layers - 1
    idx = [depths.index(d) for d in valid]
    packed_last = torch.from_numpy(packed()["acts"][("hook_resid_post", last)])[:, idx]  # [B, D_valid, h, d]
    ref = baselines.ada_scheme(model, rows, span, depths, copy=False)[last]
    err = ((packed_last - ref).norm() / ref.norm()).item()
    best = {k: min(v) for k, v in times.items()}
    flops = 2 * n_params * n_tok
    table = [("reencode", "re-encode: plain causal forward per depth"),
             ("ada_scheme", "ADA scheme (grow cache, deep-copy per depth)"),
             ("ada_rollback", "ADA scheme with exact O(1) rollback"),
             ("packed", "packed (tree mask, hooks on all layers)"), ("plain", "plain forward, same tokens, no mask")]
    print("\n| extraction method | fastest (s) | min/median/max | tokens/s (packed-equivalent) | vs packed |")
    print("|---|---:|---|---:|---:|")
    for key, label in table:
        if key in times:
            print(f"| {label} | {best[key]:.4g} | {spread(times[key])} | {n_tok / best[key]:,.0f} | "
                  f"{best[key] / best['packed']:.2f}x |")
    print(f"\nplain forward ≈ {flops / best['plain'] / 1e12:.2f} TFLOP/s (2·params·tokens); packed vs ADA scheme at "
          f"layer {last}: relative error {err:.2e} ({str(dtype).removeprefix('torch.')})")
    results.update({f"{k}_s": v for k, v in best.items()}, times=times, plain_tflops=flops / best["plain"] / 1e12,
                   packed_vs_ada_rel_err=err)

    # ---------------------------------------------------------------- guard checks (batch 1)
    mid = n_layers // 2
    probes = ProbeSet(layers=[mid], weights=torch.zeros(1, d_model).numpy(), bias=[-10.0], hook="resid_post",
                      position="probe", best_layer=mid)
    rows_out = []
    print("\n| context | decode step (ms) | ADA-LP check (ms) | early-exit check (ms) | piggyback step (ms) | "
          "check / decode |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in args.contexts:
        if n + h + 2 > model.config.max_position_embeddings:
            continue
        cfgs = {k: GuardConfig(mode="lp", early_exit=k == "early", piggyback=k == "pig") for k in ("full", "early",
                                                                                                   "pig")}
        checkers = {k: Checker(model, tok, spans, c, probes) for k, c in cfgs.items()}
        cache = new_cache(model)
        ids = torch.randint(0, vocab, (1, n), generator=g).to(dev)
        with torch.no_grad():
            model(input_ids=ids, use_cache=True, logits_to_keep=1, **{cache_kwarg(model): cache})
        mask = torch.ones((1, n), dtype=torch.long, device=dev)
        pos = torch.tensor([n], device=dev)
        nxt = torch.tensor([1], device=dev)
        before = mark(cache)

        @torch.no_grad()
        def decode(cache=cache, mask=mask, pos=pos, nxt=nxt, before=before):
            m = torch.cat([mask, mask[:, :1]], 1)
            out = model(input_ids=nxt[:, None], position_ids=pos[:, None], attention_mask=m, use_cache=True,
                        logits_to_keep=1, **{cache_kwarg(model): cache})
            rollback(cache, before)
            return out.logits

        def check(kind, checkers=checkers, cache=cache, mask=mask, pos=pos):
            return lambda: checkers[kind].lp_hidden(cache, mask, pos)

        @torch.no_grad()
        def pig(c=checkers["pig"], cache=cache, mask=mask, pos=pos, nxt=nxt, before=before):
            out = c.piggyback(cache, mask, pos, nxt, ["lp"])
            rollback(cache, before)
            return out

        step_times = time_paths({"decode": decode, "check": check("full"), "early": check("early"), "pig": pig},
                                max(args.repeats, 10), device=dev)
        t_dec, t_chk, t_early, t_pig = (min(step_times[k]) for k in ("decode", "check", "early", "pig"))
        for c in checkers.values():
            c.close()
        row = {"context": n, "decode_ms": 1e3 * t_dec, "check_ms": 1e3 * t_chk, "early_exit_ms": 1e3 * t_early,
               "piggyback_ms": 1e3 * t_pig, "times": step_times}
        rows_out.append(row)
        print(f"| {n} | {row['decode_ms']:.2f} | {row['check_ms']:.2f} | {row['early_exit_ms']:.2f} | "
              f"{row['piggyback_ms']:.2f} | {t_chk / t_dec:.2f}x |")
    results["guard"] = rows_out
    if dev.type == "cpu":
        print("\n(CPU run: a smoke test of the benchmark; the reference numbers are for a GPU such as an H200.)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    reenc = f"{best['reencode'] / best['packed']:.3f}" if "reencode" in best else "nan"
    print(f"packed_vs_plain={best['packed'] / best['plain']:.3f} reencode_vs_packed={reenc} "
          f"ada_scheme_vs_packed={best['ada_scheme'] / best['packed']:.3f} "
          f"ada_rollback_vs_packed={best['ada_rollback'] / best['packed']:.3f}")


if __name__ == "__main__":
    main()
