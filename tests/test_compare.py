"""Study runs side by side (interp.study.compare): the diagnostic thresholds and the shared-source LOSO mean.
The end-to-end read of a real run folder is in tests/test_demo.py."""

from __future__ import annotations

import numpy as np

from interp.study.compare import (
    RunAnswers,
    RunComparison,
    RunSummary,
    Separation,
    answer_separation,
    answer_tails,
    tpr_at_own_firing,
)


def test_tpr_at_own_firing_lets_exactly_k_benign_answers_fire_even_next_to_one():
    # scores a float32 could not tell apart (all round to 1.0): the thresholds must still order them
    benign = 1 - np.array([1e-9, 3e-9, 5e-9, 1e-3])
    harmful = 1 - np.array([2e-10, 2e-9, 4e-9, 1e-2])
    assert tpr_at_own_firing(benign, harmful) == [0.25, 0.5, 0.75]
    assert tpr_at_own_firing(np.array([0.2]), np.array([0.1, 0.9]), ks=(0, 1)) == [0.5, 1.0]


def _summary(name: str, sources: dict[str, float]) -> RunSummary:
    macro = {"probe": {"value": float(np.mean(list(sources.values()))), "lo": 0.0, "hi": 1.0,
                       "n_sources": len(sources)}, "ngram": {"value": 0.5}}
    worst = min(sources, key=sources.get)
    loso = {"macro": macro, "worst": {"probe": {"source": worst, "value": sources[worst]}}, "sources": sources,
            "above": 1, "below": 0, "readout": {}}
    return RunSummary(run=f"runs/{name}", model="m", spec="default", minutes=1.0, readout="layers 1", threshold=0.5,
                      calibration_answers=10, test_probe=[0.9, 0.95], test_ngram=None, tpr_per_answer=None,
                      fpr_per_answer=None, per_check_tpr=None, separation=Separation({"value": 0.9, "lo": 0.8, "hi": 0.95}, 10, 12, [0.1, 0.2, 0.3], 99),
                      loso=loso, met={"loso_macro_min": True, "loso_worst_min": False, "tpr_min": False,
                                      "per_answer": None})


def test_comparison_averages_loso_over_the_sources_every_run_holds_out():
    a = _summary("base", {"s1": 0.9, "s2": 0.8})
    b = _summary("lever", {"s1": 0.7, "s2": 1.0, "extra": 0.1})  # an extra source lowers its own mean only
    c = RunComparison(runs=[a, b])
    assert c.shared_sources() == ["s1", "s2"]
    table = c.markdown()
    assert "| LOSO mean over the 2 shared sources | 0.850 | 0.850 |" in table
    assert "| held out | base | lever |" in table and "(worst extra 0.100)" in table
    assert "0.900 [0.800, 0.950] (10 own, 12 harmful); TPR with 0 / 1 / 2 own firing 0.10 / 0.20 / 0.30" in table
    assert "per answer ≥ 0.90 at ≤ 1% | met; missed; –; missed; – | met; missed; –; missed; – |" in table
    assert RunComparison.from_json(c.to_json()).markdown() == table  # JSON round trip


def test_tails_list_the_answers_at_each_edge_of_the_operating_point_and_the_separation_reads_test_rows_only():
    sig = lambda z: 1 / (1 + np.exp(-np.asarray(z, float)))  # noqa: E731
    y = np.array([0, 0, 0, 1, 1, 0, 1, 0])
    role = np.array(["calibration", "calibration", "test", "test", "test", "test", "test", "train"], dtype=object)
    own = y == 0
    score = sig([3.0, 9.0, 5.0, 4.0, 8.0, 1.0, 7.0, np.nan])
    kinds = np.array(["own", "own", "own", "prefill", "dataset", "prefill", "prefill", "own"])
    meta = {"y": y, "groups": np.arange(8).astype(str), "sources": np.array([f"s{i}" for i in range(8)]), "kinds": kinds,
            "prompts": np.array([f"prompt {i} | x" for i in range(8)]), "response": np.array([f"answer {i}" for i in range(8)])}
    a = RunAnswers(score, role, own, meta, threshold=float(sig(9.5)), n_boot=0, seed=0)
    text = answer_tails(a, k=1)
    calib, test_benign, harmful = text.split("scoring")[1:4]
    assert "| 9.00 | s1 |" in calib  # the highest calibration answer, not the test one at 5
    assert "| 5.00 | s2 |" in test_benign and "| 4.00 | s3 | prompt 3 / x |" in harmful  # lowest harmful; pipes escaped
    assert "logit 9.50" in text
    sep = answer_separation(a)
    assert (sep.n_benign, sep.n_harmful) == (2, 3) and sep.auroc["value"] == 5 / 6  # test rows 2..6 only
    assert sep.tpr_at_own_firing == [2 / 3, 1.0, 1.0]
    # own prefills only: harmful rows 3 (4.0) and 6 (7.0) against own benign 2 (5.0) and prefill benign 5 (1.0)
    assert sep.n_prefill == 2 and sep.prefill_auroc["value"] == 3 / 4
    assert (sep.prefill_tpr["k"], sep.prefill_tpr["n"]) == (0, 2)  # threshold at logit 9.5: neither stops
    a = RunAnswers(score, role, own, meta, threshold=float(sig(6.0)), n_boot=0, seed=0)
    assert (answer_separation(a).prefill_tpr["k"], answer_separation(a).n_prefill) == (1, 2)  # 7.0 stops, 4.0 not
