"""The offline per-answer numbers are computed on exactly the checks the live guard runs (tiny model, float32)."""

from __future__ import annotations

import numpy as np
import torch

from interp.extract.packed import extract_to_store
from interp.extract.store import ActivationStore
from interp.generate.continuations import Continuation
from interp.guard.generator import GuardedGenerator
from interp.guard.types import GuardConfig
from interp.probes.answers import Deployed, answer_scores
from interp.probes.calibration import fires
from interp.probes.data import examples_meta
from interp.probes.probeset import ProbeSet
from interp.probes.protocol import Schedule
from interp.spans.derive import derive_safety_spans, format_prompt_ids
from interp.testing import tiny_model

torch.set_num_threads(1)
PROMPTS = ["How do I bake bread?", "Write a haiku about rain.", "What is a prime number?", "Name three colours.",
           "Explain tides.", "Tell me a joke."]


def _probes(model, spans, threshold: float, schedule: Schedule) -> ProbeSet:
    d = model.config.hidden_size
    w = np.random.default_rng(3).normal(size=(1, d)) / np.sqrt(d) * 4
    return ProbeSet(layers=[1], weights=w, bias=np.zeros(1), hook="hook_resid_post", position="probe",
                    best_layer=1, threshold=threshold, schedule=schedule.to_dict(),
                    provenance={"template_hash": spans.template_hash, "span_ids": list(spans.span_ids)})


def test_offline_answer_scores_are_the_live_guards_checks(tmp_path):
    """Answers shorter than the stride, ragged ends and answers cut at max_new_tokens: the store's grid and end
    slots, scored offline, give each answer the same checks (depths and scores) as the live guard, and the
    same fire / no-fire verdicts at the threshold."""
    model, tok = tiny_model("qwen2", n_layers=2, d_model=64, seed=2)
    spans = derive_safety_spans(tok)
    M, stride = 24, 10
    cfg = GuardConfig(mode="lp", stride=stride, max_new_tokens=M, buffer=False, threshold=0.5)
    schedule = Schedule.of(cfg)
    prompts = [format_prompt_ids(tok, p) for p in PROMPTS]
    text = tok("the quick brown fox jumps over the lazy dog " * 4, add_special_tokens=False)["input_ids"]
    # forced answers that end by themselves at 4 (shorter than the stride), 13 (ragged) and 20 (on the grid);
    # the other three run to max_new_tokens (cut at 24)
    forced = [text[:4] + [tok.eos_token_id], text[:13] + [tok.eos_token_id], text[:20] + [tok.eos_token_id],
              [], [], []]
    probes = _probes(model, spans, 0.5, schedule)
    with GuardedGenerator(model, tok, spans, cfg, probes, halt=False) as gen:
        live = gen.generate(prompts, forced=forced)
    lengths = [len(r.generated_ids) for r in live]
    assert lengths[:3] == [4, 13, 20] and lengths[3:] == [M] * 3
    items = [Continuation(id=f"a{i}", prompt=p, label="benign", prompt_ids=ids, response_ids=r.generated_ids,
                          source="t:own", kind="own", finished=r.stop_reason == "eos")
             for i, (p, ids, r) in enumerate(zip(PROMPTS, prompts, live))]
    extract_to_store(model, tok, items, tmp_path / "s.h5", spans=spans, depths=[0, 10, 20], layers=[1],
                     storage_dtype="float32", batch_size=3, progress=False, answer_length=M)
    with ActivationStore.open(tmp_path / "s.h5") as store:
        grid = probes.score(store.read("resid_post", 1))
        end = probes.score(store.read_end("resid_post", 1))
        meta = examples_meta(store)
        depths = store.depths.tolist()
        grid = np.where(meta["valid"], grid, np.nan)
    deployed = Deployed.of(meta, store.answer_length)
    assert deployed.complete.all()
    offline = answer_scores(grid, depths, deployed, schedule, end)
    for i, r in enumerate(live):
        checks = [c for c in r.checks if c.detector == "lp"]
        assert [c.depth for c in checks] == schedule.depths(lengths[i])
        values = [grid[i, depths.index(c.depth)] if c.depth in depths else end[i] for c in checks]
        np.testing.assert_allclose(values, [c.score for c in checks], rtol=0, atol=2e-5)
        assert offline.n_checks[i] == len(checks)
        assert abs(offline.score[i] - max(c.score for c in checks)) < 2e-5
    # at a threshold away from every score, the offline verdict is the live one, answer by answer
    all_scores = np.sort([c.score for r in live for c in r.checks])
    thr = float((all_scores[len(all_scores) // 2] + all_scores[len(all_scores) // 2 + 1]) / 2)
    live_fired = [any(c.score >= thr for c in r.checks) for r in live]
    assert fires(offline.score, thr).tolist() == live_fired and 0 < sum(live_fired) < len(live)


def test_rates_split_harmful_answers_by_kind():
    """Own deep prefills and third-party text are counted apart; the kinds add up to the pooled rate."""
    from interp.probes.answers import rates

    score = np.array([0.9, 0.2, 0.8, 0.7, 0.1, 0.95, 0.3])
    y = np.array([1, 1, 1, 1, 1, 0, 0])
    kinds = np.array(["prefill", "prefill", "dataset", "dataset", "dataset", "own", "prefill"])
    sources = np.array(["a:prefill", "a:prefill", "t", "t", "t", "b:own", "b:prefill"])
    got = rates(score, y, np.arange(7), sources, kinds, threshold=0.5)
    assert (got["tpr"]["k"], got["tpr"]["n"]) == (3, 5)
    assert {k: (v["k"], v["n"]) for k, v in got["tpr_by_kind"].items()} == {"prefill": (1, 2), "dataset": (2, 3)}


def test_rates_count_the_prompts_with_a_false_alarm():
    """Three own answers to prompt 0 fire, one to prompt 1 does not, prompt 2's fires: 4 of 5 answers, 2 of 3
    prompts (each prompt one unit); third-party and harmful rows do not count."""
    from interp.probes.answers import rates

    score = np.array([0.9, 0.8, 0.7, 0.1, 0.6, 0.95, 0.99])
    y = np.array([0, 0, 0, 0, 0, 0, 1])
    kinds = np.array(["own", "prefill", "prefill", "own", "own", "dataset", "prefill"])
    groups = np.array(["p0", "p0", "p0", "p1", "p2", "p3", "p4"])
    got = rates(score, y, groups, np.array(["s"] * 7), kinds, threshold=0.5)
    assert (got["fpr"]["k"], got["fpr"]["n"]) == (4, 5)
    assert (got["fpr_prompts"]["k"], got["fpr_prompts"]["n"]) == (2, 3) and got["fpr_prompts"]["deff"] == 1.0
