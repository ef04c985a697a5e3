"""Data-parallel extraction: shards, resume, merge, and 1 vs 2 torchrun processes (gloo, CPU)."""

import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from interp import UserError
from interp.extract.distributed import extract_shard, shard_bounds
from interp.extract.packed import extract_to_store
from interp.extract.shards import finalize, read_manifest, shard_dir, shard_path
from interp.extract.store import ActivationStore
from interp.generate.continuations import Continuation, save_jsonl
from interp.spans.derive import derive_safety_spans, format_prompt_ids
from interp.testing import tiny_model

DEPTHS = [0, 3, 8, 15]
PROMPTS = ["How do I bake bread?", "Hi", "Write a poem about the sea.", "Explain vaccines.", "Hello world",
           "def main(): print", "The quick brown fox"]
LENGTHS = [20, 2, 9, 0, 16, 5, 12]


def make_items(tok):
    rng = np.random.default_rng(0)
    specials = set(tok.all_special_ids)
    vocab = [i for i in range(len(tok)) if i not in specials]
    items = []
    for k, (prompt, n) in enumerate(zip(PROMPTS, LENGTHS)):
        ids = format_prompt_ids(tok, prompt)
        resp = [int(x) for x in rng.choice(vocab, size=n)]
        items.append(Continuation(id=f"ex{k}", prompt=prompt, label="harmful" if k % 2 else "benign",
                                  prompt_ids=ids, response_ids=resp, source="test"))
    return items


@pytest.fixture(scope="module")
def setup():
    model, tok = tiny_model("llama", n_layers=2)
    return model, tok, derive_safety_spans(tok), make_items(tok)


KW = dict(layers=[0, 1], hooks=["resid_post", "resid_pre"], storage_dtype="float32", batch_size=1,
          progress=False)


def datasets(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        attrs = {k: f.attrs[k] for k in f.attrs}
    return out, attrs


def assert_same_store(a, b, exact=True):
    da, aa = datasets(a)
    db, ab = datasets(b)
    assert sorted(da) == sorted(db)
    assert sorted(aa) == sorted(ab)
    for k in aa:
        assert np.array_equal(aa[k], ab[k]), k
    for k in da:
        if exact or da[k].dtype.kind not in "f":
            assert np.array_equal(da[k], db[k]), k
        else:
            np.testing.assert_allclose(da[k], db[k], rtol=1e-5, atol=1e-5, err_msg=k)
    # and through the reader the probe trainer uses
    with ActivationStore.open(a) as sa, ActivationStore.open(b) as sb:
        assert list(sa.examples["id"]) == list(sb.examples["id"])
        x, y = sa.read("resid_post", 1), sb.read("resid_post", 1)
        assert np.array_equal(x, y) if exact else np.allclose(x, y, atol=1e-5)


def test_shard_bounds_contiguous_balanced():
    costs = [5, 1, 1, 1, 1, 1, 10, 2, 2]
    for W in (1, 2, 3, 4, 12):
        b = shard_bounds(costs, W)
        assert len(b) == W and b[0][0] == 0 and b[-1][1] == len(costs)
        assert all(b[k][1] == b[k + 1][0] for k in range(W - 1))
    b = shard_bounds([1] * 10, 2)
    assert b == [(0, 5), (5, 10)]
    b = shard_bounds([9, 1, 1, 1, 1, 1, 1, 1, 1, 1], 2)  # one heavy example: its block stays small
    assert b == [(0, 1), (1, 10)]
    assert shard_bounds([3, 3], 4).count((2, 2)) >= 1  # more ranks than examples: empty blocks
    with pytest.raises(UserError):
        shard_bounds([1], 0)


def test_shards_merge_equal_single_store(setup, tmp_path):
    model, tok, spans, items = setup
    single = tmp_path / "single.h5"
    prov = {"model_id": "tiny"}
    extract_to_store(model, tok, items, single, spans=spans, depths=DEPTHS, provenance=prov, **KW)
    out = tmp_path / "dist.h5"
    # world size 3 over 7 examples, rank 2 crashes after one batch, then resumes
    calls = []

    def crash(n):
        calls.append(n)
        raise RuntimeError("simulated crash")

    extract_shard(model, tok, items, out, rank=0, world_size=3, spans=spans, depths=DEPTHS, provenance=prov, **KW)
    with pytest.raises(RuntimeError):
        extract_shard(model, tok, items, out, rank=2, world_size=3, spans=spans, depths=DEPTHS, provenance=prov,
                      **KW, on_batch=crash)
    with pytest.raises(UserError, match="missing|unfinished"):
        finalize(out)
    extract_shard(model, tok, items, out, rank=1, world_size=3, spans=spans, depths=DEPTHS, provenance=prov, **KW)
    with pytest.raises(UserError, match="unfinished"):
        finalize(out)
    res = extract_shard(model, tok, items, out, rank=2, world_size=3, spans=spans, depths=DEPTHS,
                        provenance=prov, **KW)
    assert res.n_computed == (res.stop - res.start) - 1  # the crashed batch was kept
    man = read_manifest(out)
    assert man["world_size"] == 3 and man["ids"] == [it.id for it in items]
    assert finalize(out) == out
    assert_same_store(single, out)
    copy = finalize(out, "copy", dest=tmp_path / "copy.h5")
    assert_same_store(single, copy)
    # the virtual file reads its shards by relative path: move both and read from elsewhere
    moved = tmp_path / "moved"
    moved.mkdir()
    os.replace(out, moved / out.name)
    os.replace(shard_dir(out), shard_dir(moved / out.name))
    assert_same_store(single, moved / out.name)
    # a different world size over the same shards is refused
    with pytest.raises(UserError, match="another split"):
        extract_shard(model, tok, items, moved / out.name, rank=0, world_size=2, spans=spans, depths=DEPTHS,
                      provenance=prov, **KW)


def test_more_ranks_than_examples(setup, tmp_path):
    model, tok, spans, items = setup
    few = items[:2]
    single = tmp_path / "single.h5"
    extract_to_store(model, tok, few, single, spans=spans, depths=DEPTHS, **KW)
    out = tmp_path / "dist.h5"
    for r in range(4):
        extract_shard(model, tok, few, out, rank=r, world_size=4, spans=spans, depths=DEPTHS, **KW)
    assert sum(shard_path(out, r, 4).exists() for r in range(4)) == 2
    finalize(out, "copy")
    assert_same_store(single, out)


def _torchrun(nproc, model_dir, items_path, out, timeout=150):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "interp.extract.distributed", "extract", "--model", str(model_dir),
           "--continuations", str(items_path), "--out", str(out), "--depths", ",".join(map(str, DEPTHS)),
           "--layers", "all", "--hooks", "resid_post", "resid_pre", "--storage-dtype", "float32",
           "--batch-size", "1", "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(setup, tmp_path):
    model, tok, spans, items = setup
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    items_path = save_jsonl(items, tmp_path / "items.jsonl")
    one, two = tmp_path / "one" / "store.h5", tmp_path / "two" / "store.h5"
    _torchrun(1, model_dir, items_path, one)
    _torchrun(2, model_dir, items_path, two)
    assert read_manifest(two)["world_size"] == 2
    assert all(shard_path(two, r, 2).exists() for r in range(2))
    assert_same_store(one, two)  # bit-identical, examples in the original order, same provenance
    assert (one.parent / "store.h5.config.json").exists()
    # and equal (up to float32 thread-count noise) to an in-process extraction of the same saved model
    from interp.model.loading import load_model

    loaded = load_model(str(model_dir), device="cpu")
    ref = tmp_path / "ref.h5"
    with ActivationStore.open(two) as s:
        prov = dict(s.provenance)
    for key in ("format_version", "hooks", "layers", "depths", "storage_dtype", "positions", "example_ids_sha256",
                "span_text", "span_ids", "probe_index", "template_hash", "spans", "depth_schedule"):
        prov.pop(key, None)
    torch.manual_seed(0)
    extract_to_store(loaded.model, loaded.tokenizer, items, ref, spans=spans, depths=DEPTHS, provenance=prov,
                     layers=[0, 1], hooks=["resid_post", "resid_pre"], storage_dtype="float32", batch_size=1,
                     progress=False)
    assert_same_store(ref, two, exact=False)


@pytest.mark.device
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices (scripts/gpu_check.py)")
def test_device_map_across_two_gpus_equals_one_device(setup, tmp_path):
    """Layer 0 on cuda:0, layer 1 and the head on cuda:1 (as --device-map auto splits a large model): the store
    and the guard's check scores equal those of the model on one device."""
    import copy

    from accelerate import dispatch_model

    from interp.guard.generator import GuardedGenerator
    from interp.guard.types import GuardConfig
    from interp.probes.probeset import ProbeSet

    model, tok, spans, items = setup
    one = copy.deepcopy(model).to("cuda:0")
    device_map = {f"model.{n}": (1 if n == "norm" else 0) for n, _ in model.model.named_children() if n != "layers"}
    device_map.update({"model.layers.0": 0, "model.layers.1": 1, "lm_head": 1})
    split = dispatch_model(copy.deepcopy(model), device_map=device_map)
    kw = dict(spans=spans, depths=DEPTHS, **KW)
    extract_to_store(one, tok, items, tmp_path / "one.h5", **kw)
    extract_to_store(split, tok, items, tmp_path / "split.h5", **kw)
    with ActivationStore.open(tmp_path / "one.h5") as a, ActivationStore.open(tmp_path / "split.h5") as b:
        for layer in (0, 1):
            np.testing.assert_allclose(b.read("resid_post", layer), a.read("resid_post", layer), rtol=1e-5, atol=1e-5)
    d = model.config.hidden_size
    probes = ProbeSet(layers=[1], weights=np.random.default_rng(0).normal(size=(1, d)) * 0.05, bias=[0.0],
                      hook="resid_post", position="probe", best_layer=1, threshold=2.0)
    prompts = [it.prompt_ids for it in items[:3]]
    cfg = dict(mode="lp", stride=4, max_new_tokens=12)
    res = []
    for m in (one, split):
        with GuardedGenerator(m, tok, spans, GuardConfig(**cfg), probes) as gen:
            res.append(gen.generate(prompts))
    for a, b in zip(*res):
        assert a.generated_ids == b.generated_ids
        np.testing.assert_allclose([c.score for c in b.checks], [c.score for c in a.checks], rtol=1e-4)


@pytest.mark.parametrize("env,says", [({"WORLD_SIZE": "0"}, "out of range"), ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2"),
                                      ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
                                      ({"LOCAL_RANK": "-1"}, "out of range")])
def test_a_broken_torchrun_environment_is_one_line(monkeypatch, env, says):
    from interp.extract.distributed import dist_env, launched_by_torchrun

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    assert dist_env() == (0, 1, 0) and not launched_by_torchrun()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=re.escape(says)):
        launched_by_torchrun()


def test_shards_merge_per_depth_labels_that_only_one_shard_holds(setup, tmp_path):
    """An insertion row (labelled per depth) in the last block only: the merged store holds the same depth_label
    as one store written alone, the other shard's rows at their own label."""
    model, tok, spans, items = setup
    items = [Continuation(**{**it.to_dict(), "meta": {}}) for it in items]
    text = tok.decode(items[6].response_ids, skip_special_tokens=True)
    items[6].label, items[6].meta = "harmful", {"insertion": {"start": 3, "end": len(text) - 3, "span": text[3:-3]}}
    single, out = tmp_path / "single.h5", tmp_path / "dist.h5"
    prov = {"model_id": "tiny"}
    extract_to_store(model, tok, items, single, spans=spans, depths=DEPTHS, provenance=prov, **KW)
    for rank in (0, 1):
        extract_shard(model, tok, items, out, rank=rank, world_size=2, spans=spans, depths=DEPTHS, provenance=prov,
                      **KW)
    with ActivationStore.open(shard_path(out, 0, 2)) as first:
        assert not first.has_depth_labels
    finalize(out, "copy")
    assert_same_store(single, out)
    with ActivationStore.open(out) as store:
        y, ex = store.depth_labels, store.examples
        assert store.has_depth_labels and y[6].tolist() == (ex["response_chars"][6] > 3).tolist()
        assert y[6, 0] == 0 and y[6, -1] == 1 and (y[:6] == ex["label"][:6, None]).all()
