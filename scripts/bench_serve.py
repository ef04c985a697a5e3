#!/usr/bin/env python
"""Benchmark ``anydepth serve``: concurrent streaming clients (batched by the worker) vs the same requests one
at a time, on one server over loopback with the openai client.

Usage:
  python scripts/bench_serve.py                                  # the embedded default model, ADA-LP
  python scripts/bench_serve.py --probes runs/demo/<model>/train-<hash> --clients 8 --max-tokens 64
  python scripts/bench_serve.py --model tiny                     # a tiny random model (smoke run)
Without ``--probes`` the guard runs a probe that never fires (a check costs what a real one costs). Requests are
greedy, so each answer must be token-identical in both runs (printed as ``identical=k/n``). Throughput is completion
tokens per second of wall time; latency is a request's end-to-end time while all clients run. Last line:
``throughput_vs_sequential=<x> p50_latency_ms=<y>`` (x > 1: batching serves more tokens per second).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np
import torch

PROMPTS = ["How do I bake bread?", "Write a poem about the sea.", "Explain how vaccines work.",
           "What is the capital of France, and why?", "Write a Python function that reverses a list.",
           "Give me three tips for a job interview.", "Describe a sunset in two sentences.",
           "How does a bicycle stay upright?", "Summarise the plot of Hamlet.", "What is a prime number?",
           "List four uses of vinegar.", "Why is the sky blue?", "Explain recursion to a child.",
           "What causes the seasons?", "Write a haiku about rain.", "How do vaccines differ from antibiotics?"]


def silent_probe(model, spans):
    """A probe set at the middle layer that scores every check far below its threshold."""
    from interp.probes.probeset import ProbeSet

    n, d = model.config.num_hidden_layers, model.config.hidden_size
    return ProbeSet(layers=list(range(n)), weights=np.zeros((n, d)), bias=np.full(n, -20.0),
                    hook="blocks.{layer}.hook_resid_post", position="probe", best_layer=n // 2, threshold=0.5,
                    provenance={"template_hash": spans.template_hash, "span_ids": list(spans.span_ids)})


def stream(client, name, prompt, max_tokens):
    """(text, completion tokens, seconds) of one streamed greedy request."""
    start, parts, n = time.perf_counter(), [], 0
    for chunk in client.chat.completions.create(model=name, messages=[{"role": "user", "content": prompt}],
                                                max_tokens=max_tokens, temperature=0, stream=True,
                                                stream_options={"include_usage": True}):
        if chunk.usage is not None:
            n = chunk.usage.completion_tokens
        parts += [c.delta.content for c in chunk.choices if c.delta.content]
    return "".join(parts), n, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model spec (default: the embedded default model); 'tiny'")
    ap.add_argument("--probes", default=None, help="a ProbeSet folder (default: a probe that never fires)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent streaming clients")
    ap.add_argument("--max-tokens", type=int, default=64, help="completion tokens per request")
    ap.add_argument("--max-batch", type=int, default=8, help="the server's --max-batch")
    ap.add_argument("--stride", type=int, default=25, help="guard check stride")
    args = ap.parse_args()

    import openai

    from interp.guard.generator import GuardedGenerator
    from interp.guard.types import GuardConfig
    from interp.probes.probeset import ProbeSet
    from interp.serve.options import ServerConfig
    from interp.serve.server import make_server
    from interp.spans.derive import derive_safety_spans

    if args.model == "tiny":
        from interp.testing import tiny_model

        model, tok = tiny_model("qwen2", n_layers=4)
        name = "tiny"
    else:
        from interp.model.loading import load_model

        lm = load_model(args.model) if args.model else load_model()
        model, tok, name = lm.model, lm.tokenizer, lm.model_id
    spans = derive_safety_spans(tok)
    probes = ProbeSet.load(args.probes) if args.probes else silent_probe(model, spans)
    guard = GuardConfig(mode="lp", stride=args.stride, max_new_tokens=args.max_tokens)
    gen = GuardedGenerator(model, tok, spans, guard, probes)
    server = make_server(gen, tok, name, ServerConfig(port=0, max_tokens_limit=args.max_tokens,
                                                      max_batch=args.max_batch, access_log=False))
    server.start()
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.clients)]
    print(f"model {name}, torch threads {torch.get_num_threads()}, {args.clients} clients x {args.max_tokens} "
          f"tokens, max_batch {args.max_batch}, guard lp stride {args.stride}", flush=True)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=3600)
        stream(client, name, prompts[0], 4)  # warm-up
        t0 = time.perf_counter()
        sequential = [stream(client, name, p, args.max_tokens) for p in prompts]
        seq_wall = time.perf_counter() - t0
        seq_tokens = sum(r[1] for r in sequential)
        print(f"sequential: {seq_tokens} tokens in {seq_wall:.1f} s = {seq_tokens / seq_wall:.1f} tok/s, "
              f"p50 latency {1000 * statistics.median(r[2] for r in sequential):.0f} ms", flush=True)

        results, barrier = [None] * len(prompts), threading.Barrier(len(prompts) + 1)

        def one(i):
            own = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=3600)
            barrier.wait()
            results[i] = stream(own, name, prompts[i], args.max_tokens)
            own.close()

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        conc_wall = time.perf_counter() - t0
        conc_tokens = sum(r[1] for r in results)
        p50 = 1000 * statistics.median(r[2] for r in results)
        print(f"concurrent: {conc_tokens} tokens in {conc_wall:.1f} s = {conc_tokens / conc_wall:.1f} tok/s, "
              f"p50 latency {p50:.0f} ms", flush=True)
        same = sum(a[0] == b[0] for a, b in zip(sequential, results))
        print(f"identical={same}/{len(prompts)} (concurrent answers equal to the one-at-a-time ones)")
        metrics = server.service.metrics.render().decode()
        batches = [ln for ln in metrics.splitlines() if ln.startswith("anydepth_batch_size_")
                   and ("_count" in ln or "_sum" in ln)]
        print("batches: " + ", ".join(batches))
        client.close()
    finally:
        server.stop()
    ratio = (conc_tokens / conc_wall) / (seq_tokens / seq_wall)
    print(f"throughput_vs_sequential={ratio:.2f} p50_latency_ms={p50:.0f}")


if __name__ == "__main__":
    main()
