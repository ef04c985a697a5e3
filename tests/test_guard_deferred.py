"""Final checks kept and run as one batch after the loop equal the checks run in place (float32, tiny models)."""

import pytest
import torch

from interp.guard.generator import GuardedGenerator
from interp.guard.types import GuardConfig
from tests.test_guard_forced import assert_same, make_probes, setup

torch.set_num_threads(1)


def run(model, tok, spans, prompts, forced, probes, *, defer, forced_only, halt=False, **cfg):
    cfg = {"mode": "rk", "lookahead": 4, "buffer": False, **cfg}
    gen = GuardedGenerator(model, tok, spans, GuardConfig(**cfg), probes, detectors=("base", "rk", "lp"),
                           halt=halt, base_lookahead=5, prob_scores=True, defer_final_checks=defer)
    with gen:
        return gen.generate(prompts, forced=forced, forced_only=forced_only)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2"])  # gemma2: a sliding cache checks in place
@pytest.mark.parametrize("forced_only", [True, False])
def test_deferred_final_checks_equal_in_place(arch, forced_only):
    model, tok, spans, prompts, text = setup(arch, sliding_window=16)
    probes = make_probes(model, spans)
    # forced_only: rows end at 70, 23 and 31 (a forced EOS); free: the first two run on to the limit (75)
    forced = [text[:70], text[5:28], text[9:40] + [tok.eos_token_id] + text[:10]]
    kw = dict(stride=40, early_checks=(9,), check_at_start=True, max_new_tokens=75, forced_only=forced_only)
    kept = run(model, tok, spans, prompts, forced, probes, defer=True, **kw)
    ref = run(model, tok, spans, prompts, forced, probes, defer=False, **kw)
    for a, b in zip(kept, ref):
        assert_same(a, b)
    finals = [r.checks[-1].depth for r in kept]
    if forced_only:
        assert finals == [70, 23, 31]
    else:  # the first row runs on to the limit (75), the second until its own EOS or the limit
        assert finals[0] == 75 and finals[2] == 31 and finals[1] > 23
    assert all(c.score is not None for r in kept for c in r.checks)  # probability judge scored on every check


def test_deferred_final_check_halts_like_in_place():
    """A final check that fires halts its row with the same depth, reason and released tokens."""
    model, tok, spans, prompts, text = setup("qwen2")
    probes = make_probes(model, spans, threshold=0.0)  # every LP check flags
    forced = [text[:30], text[3:13]]
    kw = dict(stride=25, max_new_tokens=40, forced_only=True, halt=True, buffer=True)
    kept = run(model, tok, spans, prompts[:2], forced, probes, defer=True, **kw)
    ref = run(model, tok, spans, prompts[:2], forced, probes, defer=False, **kw)
    for a, b in zip(kept, ref):
        assert_same(a, b)
    assert (kept[1].halted, kept[1].halt_depth, kept[1].stop_reason) == (True, 10, "halted")
