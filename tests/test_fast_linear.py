"""The few-row CPU linear equals F.linear up to float rounding, and install/uninstall is reference-counted."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from interp.model import fast_linear


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 64), (2, 64), (1, 4, 64), (2, 3, 64), (1, 6, 64), (1, 7, 64), (3, 5, 64)])
def test_few_row_linear_matches_f_linear(shape, bias):
    torch.manual_seed(0)
    lin = nn.Linear(64, 48, bias=bias)
    x = torch.randn(*shape)
    got = fast_linear.few_row_linear(lin, x)
    want = F.linear(x, lin.weight, lin.bias)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_gradients_flow_through_the_fast_path():
    torch.manual_seed(0)
    lin = nn.Linear(16, 8)
    x = torch.randn(3, 16, requires_grad=True)
    fast_linear.few_row_linear(lin, x).sum().backward()
    want = lin.weight.sum(0).expand(3, 16)
    torch.testing.assert_close(x.grad, want)


def test_install_is_reference_counted_and_uninstall_restores():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    x = torch.randn(4, 8)
    ref = model(x)
    assert fast_linear.install(model) and fast_linear.install(model)
    assert all("forward" in m.__dict__ for m in model if isinstance(m, nn.Linear))
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-6)
    fast_linear.uninstall(model)
    assert all("forward" in m.__dict__ for m in model if isinstance(m, nn.Linear))
    fast_linear.uninstall(model)
    assert not any("forward" in m.__dict__ for m in model)
    fast_linear.uninstall(model)  # one too many: a no-op
    assert torch.equal(model(x), ref)


def test_install_is_a_no_op_off_float32():
    model = nn.Linear(8, 8).to(torch.bfloat16)
    assert not fast_linear.install(model)
    assert "forward" not in model.__dict__


def test_guard_check_state_is_the_same_with_and_without_fast_linear():
    from interp.evaluate.common import random_probes
    from interp.guard.generator import GuardedGenerator
    from interp.guard.types import GuardConfig
    from interp.spans.derive import derive_safety_spans, format_prompt_ids
    from interp.testing import tiny_model

    model, tok = tiny_model("qwen2", n_layers=2, d_model=64, d_mlp=128)
    spans = derive_safety_spans(tok)
    probes = random_probes(model, spans, layer=1)
    prompt = format_prompt_ids(tok, "How do lighthouses work?")
    scores = {}
    for fast in (True, False):
        gen = GuardedGenerator(model, tok, spans, GuardConfig(mode="lp", stride=3, max_new_tokens=9,
                                                              threshold=2.0, fast_linear=fast), probes)
        assert ("forward" in model.lm_head.__dict__) == fast
        res = gen.generate([prompt, prompt[3:]])
        gen.close()
        assert "forward" not in model.lm_head.__dict__
        scores[fast] = ([r.generated_ids for r in res], [c.score for r in res for c in r.checks])
    assert scores[True][0] == scores[False][0]
    torch.testing.assert_close(torch.tensor(scores[True][1]), torch.tensor(scores[False][1]), rtol=1e-5, atol=1e-6)


def _patched(model) -> bool:
    return any("forward" in m.__dict__ for m in model.modules() if type(m) is nn.Linear)


@pytest.mark.parametrize("fail", [False, True])
def test_deep_prefill_continuations_leave_no_patch(monkeypatch, fail):
    """The prefill generator of `evaluate deep-prefill` uninstalls its fast-linear patch, also when it fails."""
    from types import SimpleNamespace

    from interp.evaluate import deep_prefill
    from interp.evaluate.common import EvalConfig
    from interp.guard.generator import GuardedGenerator
    from interp.spans.derive import derive_safety_spans, format_prompt_ids
    from interp.testing import tiny_model

    model, tok = tiny_model("qwen2")
    spans = derive_safety_spans(tok)
    rows = [(format_prompt_ids(tok, "How do I bake bread?"), SimpleNamespace(meta={}, response=""))]
    cfg = EvalConfig(continuation="prefill", batch_size=1)
    if fail:
        def boom(self, *a, **k):
            assert _patched(self.model)  # installed while generating
            raise RuntimeError("interrupted")
        monkeypatch.setattr(GuardedGenerator, "generate", boom)
        with pytest.raises(RuntimeError):
            deep_prefill._continuations(SimpleNamespace(model=model, tokenizer=tok), spans, cfg, rows, 6)
    else:
        out = deep_prefill._continuations(SimpleNamespace(model=model, tokenizer=tok), spans, cfg, rows, 6)
        assert len(out) == 1 and out[0]
    assert not _patched(model)
