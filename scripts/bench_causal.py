#!/usr/bin/env python
"""Benchmark the causal experiments: one patching cell, full forwards vs the span over a cached prefix.

Usage:
  python scripts/bench_causal.py                      # tiny random Qwen2, toy examples with long responses
  python scripts/bench_causal.py --model qwen2.5-coder-0.5b-instruct --continuations RUN/continuations.jsonl \\
      [--probes TRAIN_DIR] --pairs 8 --layer 12 --depth 32
The steps of one patching cell (one layer x one depth, both directions in one batch as in patching_sweep)
are timed apart for each path (one untimed warm-up per path, then ``--repeats`` rounds in alternating order;
the ratios use the fastest round, the spread is printed): the clean run (which a sweep shares across layers; on the cached path it
includes the prefix forward), the patched run, and a knockout run. Prints each, a one-layer cell, the
per-cell time of a sweep over every layer (clean run shared), the largest difference between the paths'
refusal log-odds, and last ``cached_vs_full=<ratio>`` (cached / full per-cell time in that sweep; < 1 is faster).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _tiny(args):
    from interp.causal.synthetic import toy_examples
    from interp.testing import tiny_model

    model, tok = tiny_model("qwen2", n_layers=args.tiny_layers, d_model=args.tiny_d_model)
    examples = toy_examples(tok, n_per_label=args.pairs, min_len=args.depth + 20, max_len=args.depth + 200)
    return model, tok, examples, None


def _real(args):
    from interp.causal.experiment import ProbeAdapter
    from interp.causal.inputs import Example
    from interp.generate.continuations import load_jsonl
    from interp.model.loading import load_model

    if not args.continuations:
        raise SystemExit("--continuations JSONL is needed with a real model")
    loaded = load_model(args.model)
    items = load_jsonl(args.continuations)
    examples = [Example(c.id, c.label, tuple(c.prompt_ids), tuple(c.response_ids), c.source) for c in items]
    by_label = {lab: [e for e in examples if e.label == lab and len(e.response_ids) >= args.depth][: args.pairs]
                for lab in ("harmful", "benign")}
    probe = None
    if args.probes:
        from interp.probes import ProbeSet

        probe = ProbeAdapter(ProbeSet.load(args.probes))
    return loaded.model, loaded.tokenizer, by_label["harmful"] + by_label["benign"], probe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="tiny or a model spec for interp.model.loading.load_model")
    ap.add_argument("--continuations", default=None, help="continuations JSONL (real models)")
    ap.add_argument("--probes", default=None, help="ProbeSet folder (adds the probe readout)")
    ap.add_argument("--pairs", type=int, default=8, help="harmful/benign pairs (at most)")
    ap.add_argument("--layer", type=int, default=None, help="layer to patch (default: middle)")
    ap.add_argument("--depth", type=int, default=32)
    ap.add_argument("--where", default="span", choices=("span", "probe"))
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per path, after one warm-up each")
    ap.add_argument("--tiny-layers", type=int, default=8)
    ap.add_argument("--tiny-d-model", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from interp.causal.inputs import build_batch
    from interp.causal.metrics import opener_tokens
    from interp.causal.patching import pair_up, patch_hook
    from interp.causal.runner import SpanRunner, read
    from interp.model.hooks import n_layers, resid_post
    from interp.spans.derive import derive_safety_spans

    model, tok, examples, probe = _tiny(args) if args.model == "tiny" else _real(args)
    spans = derive_safety_spans(tok)
    span = spans
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    openers = opener_tokens(tok)
    layer = args.layer if args.layer is not None else n_layers(model) // 2
    probe_kw = {"probe": probe, "probe_layers": [probe.best_layer], "probe_site": probe.site} if probe else {}
    lens = [len(e.prompt_ids) + args.depth + len(span.span_ids) for e in examples if len(e.response_ids) >= args.depth]
    print(f"model {args.model}: {len(pair_up(examples, args.depth)[0])} pairs at depth {args.depth}, layer {layer}, span {len(span.span_ids)} tokens, "
          f"rows {min(lens)}-{max(lens)} tokens, threads {torch.get_num_threads()}")

    harm, ben = pair_up(examples, args.depth)
    both = build_batch(harm + ben, args.depth, span, pad)  # as patching_sweep: one batch, partners n apart
    partner = torch.cat([torch.arange(len(harm), 2 * len(harm)), torch.arange(len(harm))])
    site = resid_post(layer)
    times: dict[str, dict[bool, list[float]]] = {k: {True: [], False: []} for k in ("clean", "patch", "knockout")}
    results: dict[bool, list[torch.Tensor]] = {}
    for rep in range(-1, args.repeats):  # rep -1: one untimed warm-up of each path
        # alternate which path runs first, so neither always gets the warmer caches
        for cached in ((False, True) if rep % 2 == 0 else (True, False)):
            # the steps of patching_sweep for one (layer, depth) cell and a knockout run, timed apart
            t0 = time.perf_counter()
            runner = SpanRunner(model, both, cached)
            clean = read(runner, openers, capture=[site], **probe_kw)
            t1 = time.perf_counter()
            hook = patch_hook(both, both, clean.cache[site][partner], args.where)
            patched = read(runner, openers, hooks={site: hook}, **probe_kw)
            t2 = time.perf_counter()
            ko = read(runner, openers, knockout=True, **probe_kw)
            t3 = time.perf_counter()
            results[cached] = [x.refusal for x in (clean, patched, ko)]
            if rep < 0:
                continue
            times["clean"][cached].append(t1 - t0)
            times["patch"][cached].append(t2 - t1)
            times["knockout"][cached].append(t3 - t2)
    diff = max(float((a - b).abs().max()) for a, b in zip(results[True], results[False]))
    best = {k: {c: min(v[c]) for c in v} for k, v in times.items()}
    for name, label in (("clean", "clean run (prefix + readout, both labels; once per depth)"),
                        ("patch", "patched run (both directions; per layer)"),
                        ("knockout", "knockout run (both labels; per depth, after the clean run)")):
        t = best[name]
        spread = "; ".join(f"{'cached' if c else 'full'} min/median/max {min(v):.3f}/{statistics.median(v):.3f}/"
                           f"{max(v):.3f} s" for c, v in sorted(times[name].items()))
        print(f"{label}: full {t[False]:.2f} s, cached {t[True]:.2f} s, ratio {t[True] / t[False]:.3f} ({spread})")
    one = {c: best["clean"][c] + best["patch"][c] for c in (True, False)}
    print(f"one-layer cell (clean + patched): full {one[False]:.2f} s, cached {one[True]:.2f} s, "
          f"ratio {one[True] / one[False]:.3f}")
    n = n_layers(model)
    sweep = {c: best["clean"][c] / n + best["patch"][c] for c in (True, False)}
    print(f"per cell in a sweep over all {n} layers (clean runs shared): full {sweep[False]:.2f} s, "
          f"cached {sweep[True]:.2f} s")
    print(f"largest |cached - full| refusal log-odds over all runs: {diff:.2e}")
    print(f"cached_vs_full={sweep[True] / sweep[False]:.3f}")


if __name__ == "__main__":
    main()
