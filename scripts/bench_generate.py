#!/usr/bin/env python
"""Benchmark continuation generation: our continuous batching (interp.generate.decode) vs batched ``model.generate``.

    python scripts/bench_generate.py                          # embedded model, 32 demo prompts, 128 new tokens
    python scripts/bench_generate.py --model tiny --n 8       # quick run on a tiny random model
    python scripts/bench_generate.py --profile-rows 8 64      # also: the top ops of one decode step per engine

Every path decodes the same chat-formatted prompts greedily to the same budget and stop tokens, in the generation
dtype (``--dtype auto``: bf16 on a CPU with native bf16, else float32; a cast copy, as ``--gen-dtype`` makes;
``--dtype int8``: int8 linears, also printing how often the tokens agree with the float32 model's).
The baseline is what a careful user writes with transformers: prompts sorted by length (less padding),
``model.generate`` on each batch with left padding and its KV cache, at every batch size of ``--batches``; the
best of them is the reference. Ours runs each engine of ``--engines`` at the same batch sizes: ``slots`` (a
preallocated per-row cache, interp/generate/slots.py) and ``cache`` (the model's forward over a DynamicCache);
``auto`` times the choice corpus builds make (``interp.generate.decode``: slots within its memory budget).
Every path is warmed once on two prompts, then timed in ``--repeats`` rounds of alternating order; tokens/s counts
the tokens each path returns; for our paths it also prints where the last round's time went (prefills, steps with
the whole batch in flight, steps with fewer rows: :class:`interp.generate.decode.DecodeTrace`). The last line is
``tokens_per_s=<x> vs_hf_generate=<y>``: our fastest path's tokens/s and its ratio to the fastest
``model.generate`` batch size (fastest rounds of each).
"""

from __future__ import annotations

import argparse

import torch

from interp.bench import spread, time_paths


def load(name: str):
    if name == "tiny":
        from interp.testing import tiny_model

        model, tok = tiny_model("qwen2", n_layers=4, d_model=256, n_heads=8, n_kv_heads=2, d_mlp=768)
        return model, tok, "tiny-qwen2 (4 layers, d 256)"
    from interp.model.loading import load_model

    loaded = load_model(name)
    return loaded.model, loaded.tokenizer, loaded.model_id


def profile_step(model, prompts, pad, rows: int) -> None:
    """Print the top ops (self CPU time) of one decode step at ``rows`` rows, for each engine."""
    from torch.profiler import ProfilerActivity, profile

    from interp.extract.masks import left_pad
    from interp.generate.slots import SlotDecoder, slot_support
    from interp.model.kvcache import cache_kwarg, new_cache

    batch = [prompts[i % len(prompts)] for i in range(rows)]
    ids, mask, pos = left_pad(batch, pad)
    with torch.no_grad():
        cache = new_cache(model)
        kw = cache_kwarg(model)
        model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1, **{kw: cache})
        tok = torch.ones(rows, 1, dtype=torch.long)

        def hf_step():
            nonlocal mask, pos
            mask = torch.cat([mask, mask.new_ones(rows, 1)], 1)
            pos = pos[:, -1:] + 1
            model(input_ids=tok, position_ids=pos, attention_mask=mask, use_cache=True, logits_to_keep=1,
                  **{kw: cache})

        steps = {"cache": hf_step}
        if slot_support(model) is None:
            dec = SlotDecoder(model, slots=rows, capacity=ids.shape[1] + 16)
            dec.prefill(*left_pad(batch, pad))
            steps["slots"] = lambda: dec.step(tok[:, 0])
        for name, step in steps.items():
            step()  # warm
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step()
            total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e3
            print(f"\n--- one decode step, engine {name}, {rows} rows: {total:.1f} ms of op time")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


def main() -> None:
    from interp.data import load_demo_set
    from interp.extract.masks import left_pad
    from interp.generate.continuations import generation_model, resolve_gen_dtype, stop_token_ids
    from interp.generate.decode import DecodeTrace, decode
    from interp.model.catalogue import DEFAULT_MODEL
    from interp.spans.derive import derive_safety_spans, format_prompt_ids

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, help="model spec, or 'tiny'")
    ap.add_argument("--n", type=int, default=32,
                    help="prompts (the built-in demo set, harmful and benign mixed; cycled past its 80 prompts)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32], help="batch sizes tried by every path")
    ap.add_argument("--engines", nargs="+", default=["slots", "cache"], choices=["slots", "cache", "auto"],
                    help="auto: what corpus builds decode with (slots, fewer rows where their cache passes the "
                         "memory budget)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "int8"],
                    help="generation dtype; int8 (opt-in, changes tokens) also prints its agreement with float32")
    ap.add_argument("--repeats", type=int, default=2, help="timed rounds per path, after one warm-up each")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    ap.add_argument("--profile-rows", type=int, nargs="*", default=[], help="profile one decode step at these rows")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    base, tok, label = load(args.model)
    dtype = resolve_gen_dtype(args.dtype, "cpu")
    model = generation_model(base, dtype)
    pool = load_demo_set()
    records = [pool[i % len(pool)] for i in range(args.n)]  # past the set's size the prompts repeat
    prompts = [list(format_prompt_ids(tok, r.prompt)) for r in records]
    stops = stop_token_ids(base, tok, derive_safety_spans(tok))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    budget = args.max_new_tokens
    for rows in args.profile_rows:
        profile_step(model, prompts, pad, rows)

    def cut(tokens: list[int]) -> list[int]:
        end = next((i for i, t in enumerate(tokens) if t in stops), None)
        return tokens if end is None else tokens[: end + 1]

    @torch.no_grad()
    def hf(rows: list[list[int]], batch: int) -> list[list[int]]:
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out: dict[int, list[int]] = {}
        for s in range(0, len(order), batch):
            chunk = order[s: s + batch]
            ids, mask, _ = left_pad([rows[i] for i in chunk], pad)
            width = ids.shape[1]
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=budget, eos_token_id=stops,
                                 pad_token_id=pad, do_sample=False, temperature=None, top_p=None, top_k=None)
            for k, i in enumerate(chunk):
                out[i] = cut(gen[k, width:].tolist())
        return [out[i] for i in range(len(rows))]

    traces: dict[str, DecodeTrace] = {}  # our paths' last round: where its time went

    def ours(rows: list[list[int]], batch: int, engine: str, key: str = "") -> list[list[int]]:
        trace = None
        if key:  # a timed round: a fresh trace, so the one printed is the last round's
            trace = traces[key] = DecodeTrace()
        return decode(model, rows, [budget] * len(rows), stops=stops, pad_id=pad, batch_size=batch, engine=engine,
                      trace=trace)

    results: dict[str, list[list[int]]] = {}
    paths = {}
    for b in args.batches:
        paths[f"hf_generate_b{b}"] = (lambda b=b: results.__setitem__(f"hf_generate_b{b}", hf(prompts, b)))
        for e in args.engines:
            paths[f"{e}_b{b}"] = (lambda b=b, e=e: results.__setitem__(f"{e}_b{b}", ours(prompts, b, e, f"{e}_b{b}")))
    print(f"model {label}, {dtype}, {len(prompts)} prompts ({min(map(len, prompts))}-{max(map(len, prompts))} "
          f"tokens), {budget} new tokens, batches {args.batches}, {torch.get_num_threads()} threads", flush=True)
    hf(prompts[:2], 2)
    for e in args.engines:
        ours(prompts[:2], 2, e)  # warm-up of every path (one-off allocations, kernel choice)
    times = time_paths(paths, args.repeats, warmup=False, log=lambda s: print(s, flush=True))
    n_tok = {k: sum(len(r) for r in v) for k, v in results.items()}
    tps = {k: n_tok[k] / min(times[k]) for k in times}
    for k in times:
        print(f"{k:>16}: {n_tok[k]} tokens, fastest {min(times[k]):.2f} s (min/median/max {spread(times[k])}), "
              f"{tps[k]:.1f} tokens/s")
    for k, trace in traces.items():
        print(f"{k:>16} (last round): {trace.summary()}")
    ref = f"hf_generate_b{min(args.batches)}"
    for k in results:  # model.generate at another batch size too: how far bf16 near-ties move it from itself
        if k != ref:
            same = sum(a == b for a, b in zip(results[ref], results[k]))
            print(f"{k}: identical outputs to {ref} on {same}/{len(prompts)} prompts (batched generate pads rows, "
                  "which can flip a near-tie)")
    if dtype == "int8":  # how far int8 linears move the greedy tokens from the float32 model's
        ref32 = decode(generation_model(base, "float32"), prompts, [budget] * len(prompts), stops=stops, pad_id=pad,
                       batch_size=max(args.batches))
        mine = results[max((k for k in tps if not k.startswith("hf_")), key=tps.get)]
        same = sum(a == b for a, b in zip(mine, ref32))
        prefix = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))) / max(len(b), 1)
                  for a, b in zip(mine, ref32)]
        print(f"int8 vs float32 greedy: identical outputs on {same}/{len(prompts)} prompts; the float32 answer's "
              f"first {100 * sum(prefix) / len(prefix):.0f}% of tokens agree on average")
    best_hf = max((k for k in tps if k.startswith("hf_")), key=tps.get)
    best = max((k for k in tps if not k.startswith("hf_")), key=tps.get)
    print(f"fastest: ours {best} {tps[best]:.1f} tokens/s, model.generate {best_hf} {tps[best_hf]:.1f} tokens/s")
    print(f"tokens_per_s={tps[best]:.2f} vs_hf_generate={tps[best] / tps[best_hf]:.3f}")


if __name__ == "__main__":
    main()
