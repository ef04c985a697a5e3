"""The position study's reads (control spans, response mean, last instruction token) equal re-encoded forwards."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from interp import UserError
from interp.extract.packed import extract_to_store
from interp.extract.store import ActivationStore
from interp.spans.controls import CONTROLS, derive_controls
from interp.spans.derive import derive_safety_spans
from interp.testing import tiny_model
from tests.test_extract import HOOKS, REENCODE_CASES, _rel, make_items, reencode_model, reference

DEPTHS = [0, 3, 10, 40]
NAMES = {"hook_resid_pre": "resid_pre", "hook_resid_post": "resid_post", "ln1.hook_normalized": "ln1"}


def _extract(tmp_path, arch, **kw):
    model, tok = reencode_model(arch)
    spans = derive_safety_spans(tok)
    controls = derive_controls(tok, spans)
    items = make_items(tok)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extract_to_store(model, tok, items, tmp_path / "s.h5", spans=spans, depths=DEPTHS, layers=[0, 1],
                         hooks=HOOKS, storage_dtype="float32", batch_size=3, progress=False, answer_length=41,
                         controls=controls, **kw)
    return model, tok, spans, controls, items


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2"])
def test_study_reads_equal_reencoding(tmp_path, arch):
    model, tok, spans, controls, items = _extract(tmp_path, arch)
    assert controls.names == list(CONTROLS), controls.skipped
    with ActivationStore.open(tmp_path / "s.h5") as store:
        ex = store.examples
        assert store.study_positions == [*CONTROLS, "response_mean", "t_inst"]
        reads = {(n, h, L): store.read(h, L, position=n) for n in store.study_positions for h in NAMES.values()
                 for L in (0, 1)}
        ends = {(n, h, L): store.read_end(h, L, position=n) for n in CONTROLS for h in NAMES.values() for L in (0, 1)}
        for i, it in enumerate(items):
            P = len(it.prompt_ids)
            t_inst = controls.t_inst(it.prompt_ids)
            assert tok.decode(it.prompt_ids[:t_inst + 1]).endswith(it.prompt)  # the user's text ends there
            prompt_ref = reference(model, it.prompt_ids)
            for k, d in enumerate([*DEPTHS, int(ex["end_depth"][i])]):
                if k < len(DEPTHS) and not ex["valid"][i, k]:
                    continue
                main = reference(model, it.prompt_ids + it.response_ids[:d])
                for name in CONTROLS:
                    ids = list(controls.spans[name])
                    ref = reference(model, it.prompt_ids + it.response_ids[:d] + ids)
                    j = controls.read_index(name) - len(ids)
                    for (hook, L), r in ref.items():
                        got = reads[(name, NAMES[hook], L)][i, k] if k < len(DEPTHS) else ends[(name, NAMES[hook], L)][i]
                        assert _rel(got, r[j]) < 1e-5, (arch, name, hook, L, d)
                if k == len(DEPTHS):
                    continue
                for (hook, L), r in main.items():
                    mean = reads[("response_mean", NAMES[hook], L)][i, k]
                    want = r[P:P + d].double().mean(0).numpy() if d else np.zeros(r.shape[-1])
                    assert (_rel(mean, want) if d else np.abs(mean).max()) < 1e-5, (arch, hook, L, d)
                    assert _rel(reads[("t_inst", NAMES[hook], L)][i, k], prompt_ref[(hook, L)][t_inst]) < 1e-5


def test_controls_leave_the_header_reads_unchanged(tmp_path):
    """Packing the controls beside the span copies changes no header, last-token or prompt read."""
    model, tok, spans, _, items = _extract(tmp_path / "a", "qwen2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extract_to_store(model, tok, items, tmp_path / "plain.h5", spans=spans, depths=DEPTHS, layers=[0, 1],
                         hooks=HOOKS, storage_dtype="float32", batch_size=3, progress=False, answer_length=41)
    with ActivationStore.open(tmp_path / "a" / "s.h5") as a, ActivationStore.open(tmp_path / "plain.h5") as b:
        for pos in [*range(len(spans.span_ids)), "last_token", "prompt"]:
            assert np.allclose(a.read("resid_post", 1, position=pos), b.read("resid_post", 1, position=pos),
                               atol=1e-5, rtol=1e-5)
        assert b.study_positions == []
        with pytest.raises(UserError, match="re-extract with --controls"):
            b.read("resid_post", 1, position="random")


def test_a_prompt_without_the_template_suffix_is_refused(tmp_path):
    model, tok = tiny_model("qwen2", n_layers=1, d_model=32)
    spans = derive_safety_spans(tok)
    items = make_items(tok, lengths=(5,))
    items[0].prompt_ids = items[0].prompt_ids[:-2]
    with pytest.raises(UserError, match="last instruction token"):
        extract_to_store(model, tok, items, tmp_path / "s.h5", spans=spans, depths=[0], layers=[0],
                         progress=False, controls=derive_controls(tok, spans))
    assert not (tmp_path / "s.h5").exists()


# bf16 is how a GPU runs these models: the cases and tolerances of test_extract's bf16 test
@pytest.mark.parametrize("arch,dtype,attn,tol", REENCODE_CASES)
@pytest.mark.device
def test_control_reads_equal_reencoding_bf16_and_sdpa(tmp_path, arch, dtype, attn, tol, device):
    model, tok = reencode_model(arch, dtype, attn, device)
    spans = derive_safety_spans(tok)
    controls = derive_controls(tok, spans)
    items = make_items(tok)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extract_to_store(model, tok, items, tmp_path / "s.h5", spans=spans, depths=DEPTHS, layers=[1],
                         hooks=("resid_post",), storage_dtype="float32", batch_size=3, progress=False,
                         controls=controls)
    checked = 0
    with ActivationStore.open(tmp_path / "s.h5") as store:
        valid = store.examples["valid"]
        reads = {name: store.read("resid_post", 1, position=name) for name in CONTROLS}
    for i, it in enumerate(items):
        for k, d in enumerate(DEPTHS):
            if not valid[i, k]:
                continue
            for name in CONTROLS:
                ids = list(controls.spans[name])
                r = reference(model, it.prompt_ids + it.response_ids[:d] + ids)[("hook_resid_post", 1)]
                want = r[controls.read_index(name) - len(ids)].float().cpu().numpy()
                assert _rel(reads[name][i, k], want) < tol, (arch, str(dtype), attn, name, d)
                checked += 1
    assert checked >= 24
