"""One greedy pass per prompt with every defence observing (no halting): the shared core of the
over-refusal and attack evaluations. Checks never change the stream, so each defence's verdict is
"did its aggregation rule fire at any check" (any flagged check by default), and the answer is the model's own
greedy answer."""

from __future__ import annotations

from tqdm import tqdm

from interp.evaluate.common import EvalConfig, batches, eval_groups
from interp.guard.generator import GuardedGenerator
from interp.guard.types import GuardConfig
from interp.spans.derive import format_prompt_ids


def observe(gm, spans, probes, cfg: EvalConfig, recs, desc: str, opener: bool = False) -> tuple[list[dict], dict]:
    """Per record: answer, base refusal (keyword rule), and per defence whether/when it fired. With ``opener``
    the answer starts with a forced opener (the record's ``target``, else ``cfg.opener``) that the model then
    continues: the matched-style control for a probe trained on prefill attacks."""
    from interp.spans.derive import encode_response

    detectors = ("rk",) + (("lp",) if probes is not None else ())
    gcfg = GuardConfig(mode="rk", stride=cfg.stride, lookahead=cfg.lookahead, matcher=cfg.matcher,
                       threshold=cfg.threshold, max_new_tokens=cfg.max_new_tokens, final_check=True,
                       aggregate=cfg.aggregate, k_of_n=cfg.k_of_n, window=cfg.window, ema_alpha=cfg.ema_alpha)
    gen = GuardedGenerator(gm.model, gm.tokenizer, spans, gcfg, probes, model_id=gm.model_id,
                           weights_sha256=gm.weights_sha256, detectors=detectors, halt=False,
                           defer_final_checks=True)
    groups = dict(zip((id(r) for _, r in recs), eval_groups(recs)))
    with gen:
        rows = []
        for chunk in tqdm(list(batches(recs, cfg.batch_size)), desc=desc):
            prompts = [format_prompt_ids(gm.tokenizer, r.prompt) for _, r in chunk]
            forced = [encode_response(gm.tokenizer, p, (r.meta or {}).get("target") or cfg.opener) if opener else []
                      for p, (_, r) in zip(prompts, chunk)]
            for (name, rec), res in zip(chunk, gen.generate(prompts, forced=forced)):
                answer = gm.tokenizer.decode(res.generated_ids, skip_special_tokens=True)
                row = {"id": rec.id, "dataset": f"{name} + forced opener" if opener else name,
                       "group": groups[id(rec)], "n_tokens": len(res.generated_ids), "answer": answer,
                       "base_refused": gen.checker.keyword(answer), "stop_reason": res.stop_reason}
                for det in detectors:
                    fired = [c.depth for c in res.checks if c.detector == det and c.fired]  # the guard's rule
                    row[f"{det}_fired"] = bool(fired)
                    row[f"{det}_first_depth"] = fired[0] if fired else None
                    row[f"{det}_checks"] = sum(c.detector == det for c in res.checks)
                    row[f"{det}_scores"] = [[c.depth, c.score] for c in res.checks if c.detector == det]
                rows.append(row)
        meta = {"detectors": list(detectors), "judge": gen.checker.keyword.describe(),
                "lp_threshold": getattr(gen.checker, "threshold", None), "guard_config": gcfg.__dict__,
                "rule": gen.rule.to_dict()}
    return rows, meta
