#!/usr/bin/env python
"""Benchmark continuation generation: continuous batching (interp.generate.decode) vs batched ``model.generate``.

    python scripts/bench_generate.py                          # embedded model, 16 demo prompts, 128 new tokens
    python scripts/bench_generate.py --model tiny --n 8       # quick run on a tiny random model

Both paths decode the same chat-formatted prompts greedily to the same per-prompt budget and stop tokens, with
``--batch`` rows at a time, in each dtype of ``--dtypes`` (a cast copy of the model, as ``--gen-dtype`` makes).
The baseline is what a careful user writes with transformers: prompts sorted by length (less padding),
``model.generate`` on each batch with left padding and the model's KV cache, in the same dtype. Ours keeps
``--batch`` rows in flight (a finished row leaves, the next prompt joins) with few-row CPU linears. Each path is
warmed once on two prompts, then timed in ``--repeats`` rounds of alternating order; tokens/s counts the tokens
each path returns. The last line is ``tokens_per_s=<x> vs_hf_generate=<y>``: our fastest configuration's tokens/s
and its ratio to ``model.generate`` in the same dtype (fastest rounds); the ratio to float32 ``model.generate``
(what the pipeline ran before) is printed above it.
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


def main() -> None:
    from interp.data import load_demo_set
    from interp.extract.masks import left_pad
    from interp.generate.continuations import generation_model, stop_token_ids
    from interp.generate.decode import decode
    from interp.model.catalogue import DEFAULT_MODEL
    from interp.spans.derive import derive_safety_spans, format_prompt_ids

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, help="model spec, or 'tiny'")
    ap.add_argument("--n", type=int, default=16, help="prompts (the built-in demo set, harmful and benign mixed)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=2, help="timed rounds per path, after one warm-up each")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tok, label = load(args.model)
    records = load_demo_set()[: args.n]
    prompts = [list(format_prompt_ids(tok, r.prompt)) for r in records]
    stops = stop_token_ids(model, tok, derive_safety_spans(tok))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    budget = args.max_new_tokens

    def cut(tokens: list[int]) -> list[int]:
        end = next((i for i, t in enumerate(tokens) if t in stops), None)
        return tokens if end is None else tokens[: end + 1]

    @torch.no_grad()
    def hf(model, rows: list[list[int]]) -> list[list[int]]:
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out: dict[int, list[int]] = {}
        for s in range(0, len(order), args.batch):
            chunk = order[s: s + args.batch]
            ids, mask, _ = left_pad([rows[i] for i in chunk], pad)
            width = ids.shape[1]
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=budget, eos_token_id=stops,
                                 pad_token_id=pad, do_sample=False, temperature=None, top_p=None, top_k=None)
            for k, i in enumerate(chunk):
                out[i] = cut(gen[k, width:].tolist())
        return [out[i] for i in range(len(rows))]

    def ours(model, rows: list[list[int]]) -> list[list[int]]:
        return decode(model, rows, [budget] * len(rows), stops=stops, pad_id=pad, batch_size=args.batch)

    results: dict[str, list[list[int]]] = {}

    def path(name, fn, m):
        def run():
            results[name] = fn(m, prompts)
        return run

    print(f"model {label}, {len(prompts)} prompts ({min(map(len, prompts))}-{max(map(len, prompts))} tokens), "
          f"{budget} new tokens, batch {args.batch}, {torch.get_num_threads()} threads", flush=True)
    paths = {}
    for dt in args.dtypes:
        m = generation_model(model, dt)
        hf(m, prompts[:2]), ours(m, prompts[:2])  # warm-up of both paths (one-off allocations, kernel choice)
        paths[f"hf_generate_{dt}"] = path(f"hf_generate_{dt}", hf, m)
        paths[f"continuous_{dt}"] = path(f"continuous_{dt}", ours, m)
    times = time_paths(paths, args.repeats, warmup=False, log=lambda s: print(s, flush=True))
    n_tok = {k: sum(len(r) for r in v) for k, v in results.items()}
    tps = {k: n_tok[k] / min(times[k]) for k in times}
    for k in times:
        print(f"{k:>22}: {n_tok[k]} tokens, fastest {min(times[k]):.2f} s (min/median/max {spread(times[k])}), "
              f"{tps[k]:.1f} tokens/s")
    for dt in args.dtypes:
        same = sum(a == b for a, b in zip(results[f"hf_generate_{dt}"], results[f"continuous_{dt}"]))
        print(f"{dt}: identical outputs {same}/{len(prompts)} prompts (batched generate pads rows, which can flip a "
              "near-tie)")
    best = max(args.dtypes, key=lambda dt: tps[f"continuous_{dt}"])
    if "float32" in args.dtypes:
        print(f"continuous {best} vs float32 model.generate: {tps[f'continuous_{best}'] / tps['hf_generate_float32']:.3f}x")
    print(f"tokens_per_s={tps[f'continuous_{best}']:.2f} vs_hf_generate={tps[f'continuous_{best}'] / tps[f'hf_generate_{best}']:.3f}")


if __name__ == "__main__":
    main()
