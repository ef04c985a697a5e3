"""Cost of the guard: per-check latency vs a decode step, early exit, memory, end-to-end slowdown.

All timings hold the cache at a fixed context length: each measured forward is rolled back with
:mod:`interp.model.kvcache` (O(1)), so a decode step and a check see the same cache. Every path is warmed once
and timed in rounds of alternating order (:func:`interp.bench.time_paths`); medians are reported with
min/median/max beside them. The end-to-end slowdown is checked against the per-check cost: predicted =
checks run × check time / unguarded time.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from tqdm.auto import tqdm

from interp.bench import min_median_max, time_paths
from interp.extract.masks import span_over_cache
from interp.guard.generator import GuardedGenerator
from interp.guard.types import GuardConfig
from interp.model.kvcache import cache_kwarg, mark, new_cache, rollback


@torch.no_grad()
def check_latency(gen: GuardedGenerator, context_len: int, repeats: int = 20, batch: int = 1, seed: int = 0) -> dict:
    """Decode step vs ADA-LP check (full and early exit) vs ADA-RK span forward at ``context_len``."""
    model, chk = gen.model, gen.checker
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, context_len), generator=g).to(device)
    mask = torch.ones_like(ids)
    cache = new_cache(model)
    kw = {cache_kwarg(model): cache}
    model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1, **kw)
    pos = torch.full((batch,), context_len, device=device)
    step_ids = ids[:, -1:]
    step_mask = torch.cat([mask, torch.ones_like(step_ids)], dim=1)
    before = mark(cache)

    def decode() -> None:
        model(input_ids=step_ids, position_ids=pos[:, None], attention_mask=step_mask, use_cache=True,
              logits_to_keep=1, **kw)
        rollback(cache, before)

    def lp(early: bool) -> Callable[[], None]:
        def fn() -> None:
            old = chk.config.early_exit
            chk.config.early_exit = early
            try:
                chk.score(chk.lp_hidden(cache, mask, pos))
            finally:
                chk.config.early_exit = old
        return fn

    def rk_span() -> None:
        s_ids, s_pos, s_mask = span_over_cache(chk.span_ids, mask, pos)
        model(input_ids=s_ids, position_ids=s_pos, attention_mask=s_mask, use_cache=True, logits_to_keep=1, **kw)
        rollback(cache, before)

    out = {"context_len": context_len, "batch": batch, "probe_layer": chk.layer,
           "n_layers": model.config.num_hidden_layers, "probe_span_len": len(chk.probe_ids),
           "rk_span_len": len(chk.span_ids)}
    paths = {"decode": decode, "rk_span": rk_span}
    if chk.probes is not None:
        paths.update(check=lp(False), early_exit=lp(True))
    times = time_paths(paths, repeats, device=device)
    for name, t in times.items():
        out[f"{name}_spread_ms"] = min_median_max(t, 1e3)
        out[f"{name}_ms"] = out[f"{name}_spread_ms"][1]
    if chk.probes is not None:
        out["check_vs_decode"] = out["check_ms"] / out["decode_ms"]
        out["early_exit_vs_decode"] = out["early_exit_ms"] / out["decode_ms"]
    kv = sum(layer.keys.numel() + layer.values.numel() for layer in cache.layers) * ids.new_zeros(
        (), dtype=next(model.parameters()).dtype).element_size()
    out["cache_bytes"] = int(kv)
    out["check_extra_kv_bytes"] = int(kv / max(context_len, 1) * len(chk.probe_ids))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        decode()
        out["decode_peak_extra_bytes"] = int(torch.cuda.max_memory_allocated() - base)
        if chk.probes is not None:
            torch.cuda.reset_peak_memory_stats()
            lp(False)()
            out["check_peak_extra_bytes"] = int(torch.cuda.max_memory_allocated() - base)
    return out


@torch.no_grad()
def slowdown(model, tokenizer, spans, probes, prompts: Sequence[Sequence[int]], *, strides: Sequence[int],
             max_new_tokens: int = 200, repeats: int = 3, base_config: GuardConfig | None = None,
             bar=None) -> list[dict]:
    """End-to-end generation time with ADA-LP at each stride (separate checks, piggybacked, early exit) vs
    unguarded, checks never firing; every configuration warmed once, then ``repeats`` rounds in alternating order. Each row gives the
    measured slowdown (medians; per-round min/max beside it) and, without piggyback, the slowdown predicted from
    the per-check cost at the run's mean context (checks run × check ms / unguarded ms). ``bar`` (a tqdm)
    advances once per generation call: (``repeats`` + 1) × (1 + 3 × strides)."""
    base_config = base_config or GuardConfig()
    common = replace(base_config, max_new_tokens=max_new_tokens, threshold=2.0, do_sample=False, final_check=False)
    configs = {"none": replace(common, mode="none")}
    for stride in strides:
        for kind in ("", "p", "e"):  # separate check, piggybacked, early exit at the probe layer
            configs[f"lp{stride}{kind}"] = replace(common, mode="lp", stride=stride, piggyback=kind == "p",
                                                   early_exit=kind == "e")
    gens = {k: GuardedGenerator(model, tokenizer, spans, c, probes if c.mode == "lp" else None)
            for k, c in configs.items()}
    done: dict[str, list] = {}
    try:
        def run(key: str) -> Callable[[], None]:
            def fn() -> None:
                done[key] = gens[key].generate(prompts)
                if bar is not None:
                    bar.update(1)
            return fn

        times = time_paths({k: run(k) for k in gens}, repeats)
        n_tokens = sum(len(r.generated_ids) for r in done["none"])
        mean_context = round(statistics.mean(len(p) for p in prompts) + n_tokens / len(prompts) / 2)
        lat = check_latency(gens[f"lp{strides[0]}"], mean_context, repeats=max(repeats, 10)) if strides else {}
    finally:
        for g in gens.values():
            g.close()
    plain = statistics.median(times["none"])
    rows = []
    for key, cfg in configs.items():
        if key == "none":
            continue
        t = statistics.median(times[key])
        per_round = [g / u - 1.0 for g, u in zip(times[key], times["none"])]
        n_checks = sum(len(r.checks) for r in done[key])
        check_ms = lat.get("early_exit_ms" if cfg.early_exit else "check_ms", float("nan"))
        predicted = None if cfg.piggyback else n_checks * check_ms / (1e3 * plain)
        rows.append({"stride": cfg.stride, "piggyback": cfg.piggyback, "early_exit": cfg.early_exit,
                     "unguarded_s": plain, "guarded_s": t,
                     "tokens": n_tokens, "slowdown": t / plain - 1.0,
                     "slowdown_spread": min_median_max(per_round),
                     "checks": n_checks, "check_ms": check_ms, "mean_context": mean_context,
                     "predicted_slowdown": predicted, "unguarded_spread_s": min_median_max(times["none"]),
                     "guarded_spread_s": min_median_max(times[key])})
    return rows


def run_cost(cfg) -> dict:
    """``anydepth evaluate cost``: latency ratios at each context, slowdown at each stride, leak window."""
    from interp.evaluate.common import plot_path, random_probes, setup_run, write_result
    from interp.spans.derive import format_prompt_ids

    gm, spans, probes = setup_run(cfg)
    probes = probes or random_probes(gm.model, spans)
    gen = GuardedGenerator(gm.model, gm.tokenizer, spans, GuardConfig(mode="lp", threshold=2.0), probes,
                           model_id=gm.model_id, weights_sha256=gm.weights_sha256)
    bar = tqdm(total=len(cfg.contexts) + 4 * (1 + 3 * len(cfg.strides)), desc="cost (latency, then slowdown)",
               unit="run")  # slowdown: a warm-up and 3 timed generations per configuration
    latency = []
    with gen:
        for n in cfg.contexts:
            latency.append(check_latency(gen, n))
            bar.update(1)
    prompts = [format_prompt_ids(gm.tokenizer, "Write a short story about a lighthouse keeper.")]
    slow = slowdown(gm.model, gm.tokenizer, spans, probes, prompts, strides=cfg.strides, max_new_tokens=cfg.max_new_tokens,
                    bar=bar)
    bar.close()
    result = {"mode": "cost", "model": gm.provenance, "device": str(next(gm.model.parameters()).device),
              "latency": latency, "slowdown": slow,
              "leak_window": {"buffered": 0, "unbuffered_max": [s - 1 for s in cfg.strides],
                              "note": "tokens a caller receives before the firing check: none with buffering, "
                                      "up to stride-1 unchecked tokens without"}}
    path = write_result(cfg.out, "cost", result, cfg)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, lab in (("check_vs_decode", "ADA-LP check"), ("early_exit_vs_decode", "early exit")):
        ax.plot([r["context_len"] for r in latency], [r[key] for r in latency], marker="o", label=lab)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("context length")
    ax.set_ylabel("time / decode step")
    ax.legend()
    fig.tight_layout()
    fig.savefig(plot_path(cfg.out, "cost"), dpi=120)
    plt.close(fig)
    result["path"] = str(path)
    return result
