"""Packed extraction into the store equals per-depth re-encoding and TransformerBridge's hook values (float32)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from interp import UserError
from interp.extract.masks import collate, plan_packed
from interp.extract.packed import SpanReader, default_batch_size, extract_to_store, parse_depths, parse_layers
from interp.extract.store import ActivationStore
from interp.generate.continuations import Continuation
from interp.spans.derive import derive_safety_spans, encode_response, format_prompt_ids
from interp.testing import tiny_model

HOOKS = ("resid_pre", "resid_post", "ln1")
DEPTHS = [0, 3, 10, 40, 45]


def make_items(tok, lengths=(44, 12, 0, 30), seed=0) -> list[Continuation]:
    g = torch.Generator().manual_seed(seed)
    items = []
    for i, n in enumerate(lengths):
        prompt = f"question number {i}: how do I bake bread?"
        p_ids = format_prompt_ids(tok, prompt)
        r_ids = torch.randint(0, len(tok) - 20, (n,), generator=g).tolist()
        items.append(Continuation(id=f"ex{i}", prompt=prompt, label="harmful" if i % 2 else "benign",
                                  prompt_ids=p_ids, response_ids=r_ids, source="test"))
    return items


def reference(model, ids: list[int]) -> dict[tuple[str, int], torch.Tensor]:
    """resid_pre / resid_post / ln1 of every layer for one plain causal forward (independent hooks)."""
    out = {}
    handles = []
    for L, block in enumerate(model.model.layers):
        handles.append(block.input_layernorm.register_forward_hook(
            lambda m, a, o, L=L: out.__setitem__(("ln1.hook_normalized", L), o[0])))
        handles.append(block.register_forward_hook(
            lambda m, a, o, L=L: out.__setitem__(("hook_resid_post", L), o[0])))
    with torch.no_grad():
        hs = model(input_ids=torch.tensor([ids], device=model.device), output_hidden_states=True).hidden_states
    for hd in handles:
        hd.remove()
    for L in range(len(model.model.layers)):
        out[("hook_resid_pre", L)] = hs[L][0]
    return out


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def reencode_model(arch: str, dtype=torch.float32, attn: str | None = None, device="cpu"):
    """The tiny model the re-encoding tests compare on, in ``dtype`` on ``device`` (attention ``attn``)."""
    model, tok = tiny_model(arch, n_layers=2, d_model=64, seed=4, sliding_window=32)
    model = model.to(device=device, dtype=dtype)
    if attn is not None:
        model.set_attn_implementation(attn)
    return model, tok


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2"])
def test_store_equals_reencoding(tmp_path, arch):
    model, tok = reencode_model(arch)
    spans = derive_safety_spans(tok)
    items = make_items(tok)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        res = extract_to_store(model, tok, items, tmp_path / "s.h5", spans=spans, depths=DEPTHS, layers=[0, 1],
                               hooks=HOOKS, storage_dtype="float32", batch_size=3, progress=False, answer_length=41)
    assert res.n_computed == len(items)
    ends = [min(len(it.response_ids), 41) for it in items]  # 41 (cut at the answer length), 12, 0, 30: off the grid
    h = len(spans.span_ids)
    with ActivationStore.open(tmp_path / "s.h5") as store:
        ex = store.examples
        assert ex["done"].all() and ex["id"].tolist() == [it.id for it in items]
        assert ex["valid"].tolist() == [[d <= len(it.response_ids) for d in DEPTHS] for it in items]
        data = {(hook, L, pos): store.read(hook, L, position=pos)
                for hook in HOOKS for L in (0, 1) for pos in list(range(h)) + ["last_token", "prompt"]}
        for i, it in enumerate(items):
            prompt_ref = reference(model, it.prompt_ids)
            for k, d in enumerate(DEPTHS):
                if not ex["valid"][i, k]:
                    continue
                ref = reference(model, it.prompt_ids + it.response_ids[:d] + list(spans.span_ids))
                last = len(it.prompt_ids) + d - 1
                for (hook, L), r in ref.items():
                    name = {"hook_resid_pre": "resid_pre", "hook_resid_post": "resid_post",
                            "ln1.hook_normalized": "ln1"}[hook]
                    for j in range(h):
                        assert _rel(data[(name, L, j)][i, k], r[-h + j]) < 1e-5, (arch, hook, L, d, j)
                    assert _rel(data[(name, L, "last_token")][i, k], r[last]) < 1e-5
                    assert _rel(data[(name, L, "prompt")][i, k], prompt_ref[(hook, L)][-1]) < 1e-5
        probe = store.read("resid_post", 1)
        assert np.array_equal(probe, data[("resid_post", 1, spans.probe_index)])
        # the end slot: the span after each answer's final check depth, as if re-encoded there
        assert ex["end_depth"].tolist() == ends and store.answer_length == 41
        for i, it in enumerate(items):
            ref = reference(model, it.prompt_ids + it.response_ids[:ends[i]] + list(spans.span_ids))
            last = len(it.prompt_ids) + ends[i] - 1
            for (hook, L), r in ref.items():
                name = {"hook_resid_pre": "resid_pre", "hook_resid_post": "resid_post",
                        "ln1.hook_normalized": "ln1"}[hook]
                for j in range(h):
                    assert _rel(store.read_end(name, L, position=j)[i], r[-h + j]) < 1e-5, (arch, hook, L, i, j)
                if ends[i]:
                    assert _rel(store.read_end(name, L, position="last_token")[i], r[last]) < 1e-5


def test_end_slot_on_a_grid_depth_equals_that_column_and_text_with_nul_stores(tmp_path):
    """An answer ending on a grid depth has its end slot equal to that column; a response holding NUL characters
    (random tiny-model text can; so can scraped text) round-trips exactly through the store."""
    model, tok = tiny_model("qwen2", n_layers=2, d_model=64, seed=4)
    spans = derive_safety_spans(tok)
    items = make_items(tok, lengths=(10, 25))
    items[0].response_ids[2:7] = tok("\x00 \\0 c\\", add_special_tokens=False)["input_ids"][:5]  # NUL + escapes
    items[1].prompt = "weird\x00prompt"
    items[1].prompt_ids = format_prompt_ids(tok, "weird prompt")
    extract_to_store(model, tok, items, tmp_path / "s.h5", spans=spans, depths=[0, 10, 20], layers=[1],
                     storage_dtype="float32", batch_size=2, progress=False, answer_length=30)
    with ActivationStore.open(tmp_path / "s.h5") as store:
        grid, end = store.read("resid_post", 1), store.read_end("resid_post", 1)
        assert store.examples["end_depth"].tolist() == [10, 25]
        assert _rel(end[0], grid[0, 1]) < 1e-5 and _rel(end[1], grid[1, 2]) > 1e-3
        assert store.examples["prompt"][1] == "weird\x00prompt"
        text = tok.decode(items[0].response_ids, skip_special_tokens=True)
        assert "\x00" in text and store.examples["response"][0] == text
    with h5py.File(tmp_path / "s.h5") as f:
        assert f["examples/prompt"].attrs["escaped"] == 1 and "escaped" not in f["examples/id"].attrs


def test_bridge_hook_values_equal_hf_hooks():
    from transformer_lens.model_bridge import TransformerBridge

    for arch in ("qwen2", "llama"):
        model, tok = tiny_model(arch, family="qwen2", n_layers=2, d_model=64, seed=5)
        spans = derive_safety_spans(tok)
        item = make_items(tok, lengths=(20,))[0]
        ids = item.prompt_ids + item.response_ids + list(spans.span_ids)
        plan = plan_packed(item.prompt_ids, item.response_ids, spans.span_ids, [20])
        reader = SpanReader(model, HOOKS, [0, 1], range(len(spans.span_ids)))
        ours = reader.run(collate([plan], tok.pad_token_id))["acts"]
        reader.remove()
        tok.init_kwargs.setdefault("name_or_path", tok.name_or_path)
        bridge = TransformerBridge.boot_transformers("tiny", hf_model=model, tokenizer=tok, device="cpu")
        names = {f"blocks.{L}.{h}": (h, L) for L in (0, 1)
                 for h in ("hook_resid_pre", "hook_resid_post", "ln1.hook_normalized")}
        _, cache = bridge.run_with_cache(torch.tensor([ids]), names_filter=lambda n, names=names: n in names)
        for name, key in names.items():
            theirs = cache[name][0, -len(spans.span_ids):].numpy()
            assert np.abs(ours[key][0, 0] - theirs).max() <= 1e-5 * np.abs(theirs).max(), (arch, name)


def test_batched_store_equals_one_at_a_time(tmp_path):
    model, tok = tiny_model("qwen2", n_layers=2, d_model=64, seed=6)
    spans = derive_safety_spans(tok)
    items = make_items(tok, lengths=(30, 5, 18, 41, 9))
    kw = dict(spans=spans, depths=[0, 5, 20, 40], layers=[1], hooks=("resid_post",), storage_dtype="float32",
              progress=False)
    extract_to_store(model, tok, items, tmp_path / "b.h5", batch_size=4, **kw)
    extract_to_store(model, tok, items, tmp_path / "one.h5", batch_size=1, **kw)
    with ActivationStore.open(tmp_path / "b.h5") as a, ActivationStore.open(tmp_path / "one.h5") as b:
        for pos in ("probe", "last_token", "prompt"):
            x, y = a.read("resid_post", 1, position=pos), b.read("resid_post", 1, position=pos)
            assert _rel(x, y) < 1e-5
    # no batch size given: one response per forward on a CPU (compute-bound there), four on an accelerator
    assert (default_batch_size(torch.device("cpu")), default_batch_size("cuda:0")) == (1, 4)


def test_early_exit_layers_subset_equals_full(tmp_path):
    model, tok = tiny_model("llama", n_layers=3, d_model=64, seed=7)
    spans = derive_safety_spans(tok)
    items = make_items(tok, lengths=(15, 25))
    kw = dict(spans=spans, depths=[0, 10], hooks=("resid_post",), storage_dtype="float32", progress=False)
    extract_to_store(model, tok, items, tmp_path / "a.h5", layers=[0], **kw)
    extract_to_store(model, tok, items, tmp_path / "b.h5", layers=[0, 1, 2], **kw)
    with ActivationStore.open(tmp_path / "a.h5") as a, ActivationStore.open(tmp_path / "b.h5") as b:
        assert np.array_equal(a.read("resid_post", 0), b.read("resid_post", 0))


def test_depth_and_layer_parsing():
    assert parse_depths("0:500:25") == list(range(0, 501, 25)) and len(parse_depths("0:500:25")) == 21
    assert parse_depths("40,0,10") == [0, 10, 40]
    assert parse_depths("0,8,16,25:100:25") == [0, 8, 16, 25, 50, 75, 100]
    assert parse_depths("0,8,16,25:end:25", end=80) == [0, 8, 16, 25, 50, 75]  # every check up to the answer length
    with pytest.raises(UserError, match="give --answer-length"):
        parse_depths("0:end:25")
    assert parse_layers("all", 4) == [0, 1, 2, 3] and parse_layers("-1,0", 4) == [0, 3]
    assert parse_layers("1:2", 4) == [1, 2]
    for bad in ("a:b", "10:0:5", "0:10:0", "", "-5", "1,1", "0,0:10:5", "0,1:2:3:4"):
        with pytest.raises(UserError):
            parse_depths(bad)
    with pytest.raises(UserError):
        parse_layers("7", 4)


def test_bad_inputs_warn_mask_and_refuse(tmp_path):
    model, tok = tiny_model("qwen2", n_layers=2, d_model=64, seed=8)
    spans = derive_safety_spans(tok)
    items = make_items(tok, lengths=(5, 0))
    kw = dict(spans=spans, layers=[1], hooks=("resid_post",), progress=False)
    with pytest.warns(UserWarning) as rec:
        extract_to_store(model, tok, items, tmp_path / "a.h5", depths=[0, 50], **kw)
    text = " ".join(str(w.message) for w in rec)
    assert "exceed every response" in text and "empty response" in text
    with ActivationStore.open(tmp_path / "a.h5") as store:
        assert store.examples["valid"].tolist() == [[True, False], [True, False]]
        assert store.examples["n_response_tokens"].tolist() == [5, 0]
        assert (store.read("resid_post", 1)[:, 1] == 0).all()  # masked, never a duplicate of another depth
    # a different depth schedule / hooks on the same store is refused
    with pytest.raises(UserError, match="depths"):
        extract_to_store(model, tok, items, tmp_path / "a.h5", depths=[0, 40], **kw)
    with pytest.raises(UserError, match="hooks"):
        extract_to_store(model, tok, items, tmp_path / "a.h5", depths=[0, 50], spans=spans, layers=[1],
                         hooks=("resid_pre",), progress=False)
    other, _ = tiny_model("qwen2", n_layers=2, d_model=64, seed=8)
    with pytest.raises(UserError, match="model_id"):
        extract_to_store(other, tok, items, tmp_path / "a.h5", depths=[0, 50], provenance={"model_id": "x"}, **kw)
    # too long for the context: error or truncate
    model.config.max_position_embeddings = len(items[0].prompt_ids) + len(spans.span_ids) + 2
    with pytest.raises(UserError, match="context"):
        extract_to_store(model, tok, items, tmp_path / "c.h5", depths=[0, 4], too_long="error", **kw)
    with pytest.warns(UserWarning, match="cut from 4 to 2"):
        extract_to_store(model, tok, items, tmp_path / "d.h5", depths=[0, 4], too_long="truncate", **kw)
    with ActivationStore.open(tmp_path / "d.h5") as store:
        assert store.examples["valid"].tolist() == [[True, False], [True, False]]
    # skip: the example that does not fit is left out and named in the store
    with pytest.warns(UserWarning, match="--too-long skip: 1 example"):
        extract_to_store(model, tok, items, tmp_path / "s.h5", depths=[0, 4], too_long="skip", **kw)
    with ActivationStore.open(tmp_path / "s.h5") as store:
        assert store.examples["id"].tolist() == ["ex1"] and store.provenance["skipped_too_long"] == ["ex0"]
    # a prompt that alone exceeds the context: truncation cannot help, and the message says so
    model.config.max_position_embeddings = 3
    with pytest.raises(UserError, match="use --too-long skip"):
        extract_to_store(model, tok, items, tmp_path / "e.h5", depths=[0, 4], too_long="truncate", **kw)
    assert not (tmp_path / "e.h5").exists()


def test_response_tokenised_in_context_matches_encode_response():
    _, tok = tiny_model("qwen2", n_layers=1)
    p = format_prompt_ids(tok, "hi")
    assert encode_response(tok, p, "Sure, here is") == tok("Sure, here is", add_special_tokens=False)["input_ids"]


WORKER = Path(__file__).with_name("resume_worker.py")


def _run_worker(out: Path, kill_after: int | None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    args = [sys.executable, str(WORKER), str(out)] + ([str(kill_after)] if kill_after is not None else [])
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)


def test_resume_after_sigkill_equals_uninterrupted(tmp_path):
    killed = _run_worker(tmp_path / "r.h5", kill_after=2)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with ActivationStore.open(tmp_path / "r.h5") as store:  # readable after the crash, some rows done
        n_done = int(store.done.sum())
        assert 0 < n_done < store.n_examples
    resumed = _run_worker(tmp_path / "r.h5", kill_after=None)
    assert resumed.returncode == 0, resumed.stderr
    n_examples = 10
    assert resumed.stdout.split()[-1] == str(n_examples - n_done)  # only unfinished batches are recomputed
    sys.path.insert(0, str(WORKER.parent))
    import resume_worker

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same as the worker: identical kernels, bit-identical values
    try:
        resume_worker.run(str(tmp_path / "full.h5"))
    finally:
        torch.set_num_threads(threads)
        sys.path.remove(str(WORKER.parent))
    with h5py.File(tmp_path / "r.h5") as a, h5py.File(tmp_path / "full.h5") as b:
        names: list[str] = []
        b.visit(lambda n: names.append(n) if isinstance(b[n], h5py.Dataset) else None)
        assert any(n.startswith("acts/") for n in names)
        for n in names:
            assert np.array_equal(a[n][()], b[n][()]), n
        assert a["examples/done"][()].all()


def test_kernels_without_custom_masks_are_refused(tmp_path):
    """flash-attention / flex kernels cannot take the packed tree mask or the piggyback mask: one-line error at
    every custom-mask entry point, and nothing written."""
    from interp.guard.generator import GuardedGenerator
    from interp.guard.types import GuardConfig

    model, tok = tiny_model("qwen2", n_layers=2)
    spans = derive_safety_spans(tok)
    p = format_prompt_ids(tok, "Hi")
    items = [Continuation(id="a", prompt="Hi", label="benign", prompt_ids=p, response_ids=encode_response(tok, p, "Hello"))]
    for impl in ("flash_attention_2", "flex_attention"):
        model.config._attn_implementation = impl
        with pytest.raises(UserError, match="attn_implementation='sdpa'"):
            extract_to_store(model, tok, items, tmp_path / "s.h5", spans=spans, depths=[0, 1], layers=[0],
                             progress=False)
        assert not (tmp_path / "s.h5").exists()
        with pytest.raises(UserError, match="--piggyback"):
            GuardedGenerator(model, tok, spans, GuardConfig(mode="rk", matcher="prob", piggyback=True))
    model.config._attn_implementation = "sdpa"
    GuardedGenerator(model, tok, spans, GuardConfig(mode="rk", matcher="prob", piggyback=True)).close()


def test_float16_overflow_is_refused_and_bfloat16_stores_it(tmp_path):
    """Massive activations (past float16's 65504) are not written as inf: a one-line error names the hook and
    layer, the run leaves no file, and --store-dtype bfloat16 stores them."""
    model, tok = tiny_model("qwen2", n_layers=2)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(1e7)
    spans = derive_safety_spans(tok)
    p = format_prompt_ids(tok, "Hi")
    items = [Continuation(id="a", prompt="Hi", label="benign", prompt_ids=p,
                          response_ids=encode_response(tok, p, "Hello there"))]
    kw = dict(spans=spans, depths=[0, 2], layers=[0, 1], progress=False, hooks=("resid_pre", "resid_post"))
    with pytest.raises(UserError, match="overflow float16"):
        extract_to_store(model, tok, items, tmp_path / "h.h5", storage_dtype="float16", **kw)
    assert not (tmp_path / "h.h5").exists()
    extract_to_store(model, tok, items, tmp_path / "b.h5", storage_dtype="bfloat16", **kw)
    with ActivationStore.open(tmp_path / "b.h5") as store:
        x = store.read("resid_pre", 0)
    assert np.isfinite(x).all() and np.abs(x).max() > 65504


def test_a_run_that_fails_before_its_first_row_leaves_no_file(tmp_path):
    """Token ids from another tokenizer (past this vocabulary) are refused in one line before anything is written,
    and a failure in the first forward leaves no half-written store behind (there was nothing to resume)."""
    model, tok = tiny_model("qwen2", n_layers=2)
    spans = derive_safety_spans(tok)
    p = format_prompt_ids(tok, "Hi")
    items = [Continuation(id="a", prompt="Hi", label="benign", prompt_ids=p, response_ids=[len(tok) + 50] * 4)]
    with pytest.raises(UserError, match="another tokenizer"):
        extract_to_store(model, tok, items, tmp_path / "s.h5", spans=spans, depths=[0, 2], layers=[0],
                         progress=False)
    assert not (tmp_path / "s.h5").exists()
    # a failure inside the first forward (here: the model itself raises) leaves no file either
    good = [Continuation(id="a", prompt="Hi", label="benign", prompt_ids=p, response_ids=[5, 6, 7, 8])]

    def broken(*a, **k):
        raise RuntimeError("CUDA error: device-side assert triggered")

    block = model.model.layers[0]
    block.forward, original = broken, block.forward
    try:
        with pytest.raises(RuntimeError, match="device-side"):
            extract_to_store(model, tok, good, tmp_path / "s.h5", spans=spans, depths=[0, 2], layers=[0],
                             progress=False)
    finally:
        block.forward = original
    assert not (tmp_path / "s.h5").exists()


# bf16 is how a GPU runs these models: the tolerance fits bf16 rounding (measured worst 0.009 with sdpa, 0 with
# eager) and a mask one token too wide gives 0.09-0.43 on these models, so the test fails when the mask is wrong.
# (transformers has no sdpa path for Gemma-2, so it runs eager only)
REENCODE_CASES = [(arch, dtype, attn, tol) for arch in ("llama", "qwen2", "gemma2")
                  for dtype, attn, tol in ((torch.float32, "sdpa", 1e-5), (torch.bfloat16, "eager", 2e-2),
                                           (torch.bfloat16, "sdpa", 2e-2))
                  if not (arch == "gemma2" and attn == "sdpa")]


@pytest.mark.parametrize("arch,dtype,attn,tol", REENCODE_CASES)
@pytest.mark.device
def test_store_equals_reencoding_bf16_and_sdpa(tmp_path, arch, dtype, attn, tol, device):
    model, tok = reencode_model(arch, dtype, attn, device)
    spans = derive_safety_spans(tok)
    items = make_items(tok)
    h = len(spans.span_ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extract_to_store(model, tok, items, tmp_path / "s.h5", spans=spans, depths=DEPTHS, layers=[0, 1],
                         hooks=("resid_post",), storage_dtype="float32", batch_size=3, progress=False)
    with ActivationStore.open(tmp_path / "s.h5") as store:
        valid = store.examples["valid"]
        X = np.stack([store.read("resid_post", 1, position=j) for j in range(h)], axis=2)
    checked = 0
    for i, it in enumerate(items):
        for k, d in enumerate(DEPTHS):
            if valid[i, k]:
                r = reference(model, it.prompt_ids + it.response_ids[:d] + list(spans.span_ids))
                r = r[("hook_resid_post", 1)].float().cpu().numpy()
                for j in range(h):
                    assert _rel(X[i, k, j], r[-h + j]) < tol, (arch, str(dtype), attn, d, j)
                checked += 1
    assert checked >= 8


def test_resume_refuses_other_tokens_under_the_same_ids(tmp_path):
    """The store's resume identity covers the token ids of every row, not only the example ids."""
    model, tok = tiny_model("qwen2", n_layers=2)
    spans = derive_safety_spans(tok)
    items = make_items(tok, lengths=(6, 9))
    kw = dict(spans=spans, depths=[0, 4], layers=[0], progress=False, storage_dtype="float32")
    extract_to_store(model, tok, items, tmp_path / "s.h5", **kw)
    extract_to_store(model, tok, items, tmp_path / "s.h5", **kw)  # the same rows: a no-op resume
    other = [Continuation(id=it.id, prompt=it.prompt, label=it.label, prompt_ids=it.prompt_ids,
                          response_ids=list(reversed(it.response_ids)), source=it.source) for it in items]
    with pytest.raises(UserError, match="token_ids_sha256"):
        extract_to_store(model, tok, other, tmp_path / "s.h5", **kw)


def test_a_store_without_given_provenance_refuses_another_model(tmp_path):
    """extract_to_store(..., provenance=None) records the model itself, so another model cannot append."""
    a, tok = tiny_model("qwen2", n_layers=2, seed=0)
    b, _ = tiny_model("qwen2", n_layers=3, seed=1)
    spans = derive_safety_spans(tok)
    items = make_items(tok, lengths=(6, 9))
    kw = dict(spans=spans, depths=[0, 4], layers=[0], progress=False, storage_dtype="float32")
    extract_to_store(a, tok, items[:1], tmp_path / "s.h5", **kw)
    with ActivationStore.open(tmp_path / "s.h5") as store:
        assert store.provenance["n_layers"] == 2 and store.provenance["tokenizer_sha256"]
    with pytest.raises(UserError, match="n_layers"):
        extract_to_store(b, tok, items[:1], tmp_path / "s.h5", **kw)
