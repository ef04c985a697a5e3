#!/usr/bin/env python
"""Benchmark packed extraction and guard checks on a random-init model (the GPU reference table: extraction and checks).

    python scripts/bench_gpu.py                       # Llama-3.1-8B shape, bf16, on the first GPU
    python scripts/bench_gpu.py --shape tiny          # 2-layer toy shape on CPU (a smoke test, not a benchmark)
    python scripts/bench_gpu.py --device-map auto     # split the model over all visible GPUs (accelerate)

Extraction of B responses (prompt P, response R, D depths, span h), each method timed as the median of
``--repeats`` runs after one warm-up: re-encoding every depth separately; ADA's scheme (grow a KV cache through
the response, deep-copy it at each depth, forward the span on the copy); packed (one tree-masked forward with
hooks reading every layer at the span positions); a plain forward over the same tokens (no mask, no hooks).
Guard (batch 1): one decode step, an ADA-LP check (span forward + exact rollback), the same with early exit at
the middle layer, and a piggybacked decode+check step, over caches of the given context lengths.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
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


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


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
    base = model.model
    results: dict = {"device": name, "shape": shape, "dtype": str(dtype), "B": B, "P": P, "R": R,
                     "depths": depths, "h": h, "packed_tokens": n_tok}

    @torch.no_grad()
    def plain():
        return base(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).last_hidden_state

    reader = SpanReader(model, ["resid_post"], list(range(n_layers)), list(range(h)))
    t_packed, packed_out = timed(lambda: reader.run(batch), dev, args.repeats)
    reader.remove()
    t_plain, _ = timed(plain, dev, args.repeats)

    last = n_layers - 1
    grab: dict = {}
    hook = base.layers[last].register_forward_hook(
        lambda m, a, o: grab.__setitem__("x", (o[0] if isinstance(o, tuple) else o)[:, -h:].float().cpu()))

    @torch.no_grad()
    def reencode():
        out = []
        for d in valid:
            ids = torch.tensor([p + r[:d] + span for p, r in rows], device=dev)
            base(input_ids=ids, use_cache=False)
            out.append(grab["x"])
        return out

    kw = cache_kwarg(base)

    @torch.no_grad()
    def ada_scheme():
        cache = new_cache(model)
        ids = torch.tensor([p for p, _ in rows], device=dev)
        base(input_ids=ids, use_cache=True, **{kw: cache})
        done, out = 0, []
        for d in valid:
            if d > done:
                chunk = torch.tensor([r[done:d] for _, r in rows], device=dev)
                pos = torch.arange(P + done, P + d, device=dev).expand(B, -1)
                base(input_ids=chunk, position_ids=pos, use_cache=True, **{kw: cache})
                done = d
            fork = copy.deepcopy(cache)
            sid = torch.tensor([span] * B, device=dev)
            pos = torch.arange(P + d, P + d + h, device=dev).expand(B, -1)
            base(input_ids=sid, position_ids=pos, use_cache=True, **{kw: fork})
            out.append(grab["x"])
            del fork
        return out

    t_ada, ada_out = timed(ada_scheme, dev, args.repeats)
    t_re, re_out = (float("nan"), None) if args.skip_reencode else timed(reencode, dev, args.repeats)
    hook.remove()
    # agreement at the last layer, valid depths (float32 should be ~1e-6; bf16 drifts through many layers)
    packed_last = torch.from_numpy(packed_out["acts"][("hook_resid_post", last)])  # [B, D, h, d]
    idx = [depths.index(d) for d in valid]
    ref = torch.stack(ada_out, 1)  # [B, D_valid, h, d]
    err = ((packed_last[:, idx] - ref).norm() / ref.norm()).item()
    flops = 2 * n_params * n_tok
    table = [("re-encode per depth", t_re), ("ADA scheme (grow cache, deep-copy per depth)", t_ada),
             ("packed (tree mask, hooks on all layers)", t_packed), ("plain forward, same tokens", t_plain)]
    print("\n| extraction method | time (s) | tokens/s (packed-equivalent) | vs packed |")
    print("|---|---:|---:|---:|")
    for label, t in table:
        print(f"| {label} | {t:.4g} | {n_tok / t:,.0f} | {t / t_packed:.2f}x |")
    print(f"\nplain forward ≈ {flops / t_plain / 1e12:.2f} TFLOP/s (2·params·tokens); packed vs ADA scheme at layer "
          f"{last}: relative error {err:.2e} ({str(dtype).removeprefix('torch.')})")
    results.update(reencode_s=t_re, ada_s=t_ada, packed_s=t_packed, plain_s=t_plain,
                   plain_tflops=flops / t_plain / 1e12, packed_vs_ada_rel_err=err)

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

        t_dec, _ = timed(decode, dev, max(args.repeats, 10))

        def check(kind, checkers=checkers, cache=cache, mask=mask, pos=pos):
            return lambda: checkers[kind].lp_hidden(cache, mask, pos)

        t_chk, _ = timed(check("full"), dev, max(args.repeats, 10))
        t_early, _ = timed(check("early"), dev, max(args.repeats, 10))

        @torch.no_grad()
        def pig(c=checkers["pig"], cache=cache, mask=mask, pos=pos, nxt=nxt, before=before):
            out = c.piggyback(cache, mask, pos, nxt, ["lp"])
            rollback(cache, before)
            return out

        t_pig, _ = timed(pig, dev, max(args.repeats, 10))
        for c in checkers.values():
            c.close()
        row = {"context": n, "decode_ms": 1e3 * t_dec, "check_ms": 1e3 * t_chk, "early_exit_ms": 1e3 * t_early,
               "piggyback_ms": 1e3 * t_pig}
        rows_out.append(row)
        print(f"| {n} | {row['decode_ms']:.2f} | {row['check_ms']:.2f} | {row['early_exit_ms']:.2f} | "
              f"{row['piggyback_ms']:.2f} | {t_chk / t_dec:.2f}x |")
    results["guard"] = rows_out
    if dev.type == "cpu":
        print("\n(CPU run: a smoke test of the benchmark; the reference numbers are for a GPU such as an H200.)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
