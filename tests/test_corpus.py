"""The corpus spec, its bad inputs, the build (rows, labels, kinds) and its crash-safe resume."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from interp import UserError
from interp.cli.main import main as cli_main
from interp.corpus import journal
from interp.corpus.build import write_corpus
from interp.corpus.plan import plan_corpus
from interp.corpus.spec import load_spec, spec_from_dict
from interp.data import DATA_ENV
from interp.generate.continuations import load_jsonl
from interp.spans.derive import encode_response
from interp.testing import tiny_model

HERE = Path(__file__).resolve().parent
MIRROR = Path(os.environ.get(DATA_ENV) or HERE.parents[1] / "shared" / "data")
needs_mirror = pytest.mark.skipif(not MIRROR.is_dir(), reason=f"no dataset mirror at {MIRROR}")
OPENERS = ["Sure, here is", "Of course:"]


def judge(text: str) -> bool:  # the worker's stand-in refusal judge (a random model never refuses)
    return len(text) < 6


@pytest.fixture(scope="module")
def model_tok():
    return tiny_model("qwen2", n_layers=2, d_model=64, seed=5)


def _sources(folder: Path) -> tuple[Path, Path]:
    """Small synthetic sources: 5 harmful prompts (3 with a response), 4 benign prompts with responses."""
    folder.mkdir(parents=True, exist_ok=True)
    harmful, benign = folder / "harm.jsonl", folder / "kind.jsonl"
    words = ["weapon", "poison plan", "steal a car now", "hack the bank quickly", "forge papers"]
    rows = [{"prompt": f"{words[i]} {i}", "label": "harmful",
             **({"response": f"Here is how, part {i}: step one."} if i < 3 else {})} for i in range(5)]
    harmful.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rows = [{"prompt": f"a kind question {i}", "label": "benign", "response": f"A kind answer {i}."}
            for i in range(4)]
    benign.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return harmful, benign


def _spec(folder: Path, **top) -> dict:
    harmful, benign = _sources(folder)
    return {"name": "tiny", "seed": 3, "max_new_tokens": 6, **top, "entries": [
        {"source": str(harmful), "kind": "prefill", "label": "harmful", "count": 4, "openers": OPENERS},
        {"source": str(harmful), "kind": "dataset", "label": "harmful"},
        {"source": str(benign), "kind": "own", "label": "benign", "count": 3},
        {"source": str(benign), "kind": "prefill", "label": "benign", "count": 2, "openers": OPENERS},
        {"source": str(benign), "kind": "dataset", "label": "benign", "count": 2},
        {"source": str(harmful), "kind": "refusal", "label": "benign", "count": 4, "max_new_tokens": 4},
    ]}


def _write_spec(folder: Path, **top) -> Path:
    path = folder / "spec.json"
    path.write_text(json.dumps(_spec(folder, **top)))
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _build(model_tok, spec, out: Path, **kw) -> dict:
    model, tok = model_tok
    return write_corpus(model, tok, spec, out, model_provenance={"model_id": "tiny-qwen2"}, batch_size=2,
                        progress=False, judge=judge, **kw)


# --- the spec --------------------------------------------------------------------------------------------------

def test_yaml_and_json_specs_agree_and_hash_canonically(tmp_path):
    data = _spec(tmp_path)
    (tmp_path / "s.json").write_text(json.dumps(data))
    import yaml

    (tmp_path / "s.yaml").write_text("# a comment changes nothing\n" + yaml.safe_dump(data))
    a, b = load_spec(str(tmp_path / "s.json")), load_spec(str(tmp_path / "s.yaml"))
    assert a == b and a.sha256() == b.sha256()
    assert [e.kind for e in a.entries] == ["prefill", "dataset", "own", "prefill", "dataset", "refusal"]
    assert a.entries[0].openers == tuple(OPENERS) and a.tokens_for(a.entries[5]) == 4
    assert spec_from_dict(json.loads(a.canonical_json())) == a


BAD = [
    ({"entries": [{"source": "advbnch", "kind": "own", "label": "benign"}]}, "unknown source 'advbnch'; known: demo, advbench"),
    ({"entries": [{"source": "advbench", "kind": "prefill", "label": "harmful"}]}, "a prefill entry needs openers"),
    ({"entries": [{"source": "advbench", "kind": "prefill", "label": "harmful", "openers": ["  "]}]},
     "a prefill entry needs openers"),
    ({"entries": [{"source": "advbench", "kind": "prefill", "label": "harmful", "openers": ["a", ""]}]},
     "an opener is empty"),
    ({"entries": [{"source": "jbb_benign", "kind": "own", "label": "benign", "openers": ["Sure"]}]},
     "openers only apply to kind prefill"),
    ({"entries": [{"source": "advbench", "kind": "own", "label": "benign", "cuont": 3}]},
     "entry 1: unknown key 'cuont'; known keys: source, kind, label, count"),
    ({"entires": []}, "unknown key 'entires'"),
    ({"entries": [{"source": "advbench", "label": "harmful"}]}, "entry 1: missing key 'kind'"),
    ({"entries": [{"source": "advbench", "kind": "answer", "label": "harmful"}]},
     "unknown kind 'answer'; use one of own, prefill, dataset, refusal"),
    ({"entries": [{"source": "advbench", "kind": "refusal", "label": "harmful"}]}, "give them label benign"),
    ({"entries": [{"source": "advbench", "kind": "own", "label": "harmful"}]}, "use kind refusal"),
    ({"entries": [{"source": "advbench", "kind": "dataset", "label": "unsafe-ish"}]}, "label must be harmful or benign"),
    ({"entries": [{"source": "advbench", "kind": "dataset", "label": "harmful", "count": 0}]}, "count must be >= 1"),
    ({"entries": [{"source": "advbench", "kind": "dataset", "label": "harmful", "count": "10"}]},
     "count must be null or an int"),
    ({"entries": [{"source": "advbench", "kind": "dataset", "label": "harmful"}] * 2}, "entry 2 repeats entry 1"),
    ({"entries": []}, "entries must be a non-empty list"),
    ({"entries": [{"source": "jbb_benign", "kind": "own", "label": "benign"}], "top_p": 0}, "top_p must be in (0, 1]"),
]


@pytest.mark.parametrize("data, message", BAD, ids=[m for _, m in BAD])
def test_bad_specs_get_one_line_errors(data, message):
    with pytest.raises(UserError) as err:
        spec_from_dict({"name": "x", **data}, where="spec.yaml")
    text = str(err.value)
    assert message in text and "\n" not in text and text.startswith("spec.yaml")


def test_bad_spec_files(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: x\nentries: [\n")
    with pytest.raises(UserError, match=r"bad.yaml:\d+: malformed YAML"):
        load_spec(str(tmp_path / "bad.yaml"))
    with pytest.raises(UserError, match="no corpus spec at .*nope.yaml"):
        load_spec(str(tmp_path / "nope.yaml"))
    (tmp_path / "latin1.yaml").write_bytes("name: café\n".encode("latin-1"))  # issue 33 item 8
    with pytest.raises(UserError, match=r"latin1.yaml: not UTF-8 text \(byte 9 is 0xe9\); save the spec as UTF-8"):
        load_spec(str(tmp_path / "latin1.yaml"))
    (tmp_path / "twice.yaml").write_text("name: x\nentries:\n  - source: advbench\n    count: 3\n    count: 4\n")
    with pytest.raises(UserError, match=r"twice.yaml:5: .*key 'count' is given twice in one entry \(lines 4 and 5\)"):
        load_spec(str(tmp_path / "twice.yaml"))
    (tmp_path / "twice.json").write_text('{"name": "x", "name": "y", "entries": []}')
    with pytest.raises(UserError, match=r"twice.json: key 'name' is given twice in one object"):
        load_spec(str(tmp_path / "twice.json"))


def test_count_beyond_source_says_how_many_it_has(tmp_path):
    data = _spec(tmp_path)
    data["entries"][2]["count"] = 9
    with pytest.raises(UserError, match=r"entry 3 \(.*kind.jsonl:own\): count 9 is more than the source holds: "
                                        r".* has 4 distinct benign prompts; lower count"):
        plan_corpus(spec_from_dict(data))
    data = _spec(tmp_path)
    data["entries"][1]["count"] = 4  # only 3 of the 5 harmful rows have a response
    with pytest.raises(UserError, match="has 3 harmful records with a response"):
        plan_corpus(spec_from_dict(data))


def test_overlapping_splits_are_refused(tmp_path):
    path = tmp_path / "split.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"question {i}",
                                        "response": "answer", "split": f"a/{i % 2}"}) + "\n" for i in range(4)))
    entry = {"source": f"benign:{path}", "kind": "dataset", "label": "benign"}
    spec = spec_from_dict({"name": "x", "entries": [{**entry, "split": "a"}, {**entry, "split": "a/1"}]}, "s.yaml")
    with pytest.raises(UserError, match=r"s.yaml: entries 1 and 2 both make row .*#dataset' \(overlapping splits"):
        plan_corpus(spec, where="s.yaml")


@needs_mirror
def test_shipped_specs_plan_within_the_mirror(monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(MIRROR))
    for name in ("default", "demo", "styles", "scale"):
        tasks = plan_corpus(load_spec(name))
        rows = {t.row_id(r.id) for t in tasks for r in t.records}
        assert len(rows) == sum(len(t.records) for t in tasks)
        kinds = {t.entry.kind for t in tasks}
        assert kinds == {"own", "prefill", "dataset", "refusal"}
        harmful_openers = {t.opener for t in tasks if t.entry.kind == "prefill" and t.entry.label == "harmful"}
        benign_openers = {t.opener for t in tasks if t.entry.kind == "prefill" and t.entry.label == "benign"}
        assert len(harmful_openers) >= 2 and harmful_openers <= benign_openers  # matched style
        if name == "styles":  # issue 31's style lever: >= 12 openers, every one on both classes
            assert len(harmful_openers) == 12 and harmful_openers == benign_openers
            default = plan_corpus(load_spec("default"))
            assert ({(t.entry.source, t.entry.kind, t.entry.label) for t in tasks}
                    == {(t.entry.source, t.entry.kind, t.entry.label) for t in default})
            assert ({r.id for t in tasks for r in t.records} == {r.id for t in default for r in t.records})
        if name == "scale":  # issue 31's data-scale lever: the default's entries with ~3x its own generations
            default = plan_corpus(load_spec("default"))
            key = lambda t: (t.entry.source, t.entry.kind, t.entry.label, tuple(t.entry.openers or ()))  # noqa: E731
            assert {key(t) for t in tasks} == {key(t) for t in default}
            own = sum(len(t.records) for t in tasks if t.entry.kind != "dataset")
            assert own >= 2.5 * sum(len(t.records) for t in default if t.entry.kind != "dataset")
            assert ({r.id for t in tasks if t.entry.kind == "dataset" for r in t.records}
                    == {r.id for t in default if t.entry.kind == "dataset" for r in t.records})
        if name == "demo":
            assert len(rows) <= 420  # the CPU budget of `make demo` (README, "The demo": 17 min on 2 cores)
            own = [r for t in tasks if t.entry.label == "benign" and t.entry.kind == "own" for r in t.records]
            # the population its threshold is calibrated on: the demo preset's 40% of it is >= 100 own answers
            assert len(own) >= 250
    causal = plan_corpus(load_spec("causal"))  # matched pairs only: the same openers on both labels
    assert {(t.entry.kind, t.entry.label) for t in causal} == {("prefill", "harmful"), ("prefill", "benign")}
    assert {t.opener for t in causal if t.entry.label == "harmful"} == {t.opener for t in causal
                                                                          if t.entry.label == "benign"}
    demo_prompts = {r.prompt for t in plan_corpus(load_spec("demo")) for r in t.records}
    # 9 since the demo grew to 410 rows (README, Causality: a rerun against a newer demo probe set drops them)
    assert len(demo_prompts & {r.prompt for t in causal for r in t.records}) <= 9
    bad = spec_from_dict({"name": "x", "entries": [{"source": "advbench", "kind": "prefill", "label": "harmful",
                                                     "count": 600, "openers": ["Sure"]}]})
    with pytest.raises(UserError, match="'advbench' has 520 distinct harmful prompts"):
        plan_corpus(bad)
    bad = spec_from_dict({"name": "x", "entries": [{"source": "shadow_alignment", "kind": "prefill",
                                                     "label": "harmful", "count": 600, "openers": ["Sure"]}]})
    with pytest.raises(UserError, match="has 564 distinct harmful prompts"):  # 4 models answer the same prompts
        plan_corpus(bad)


def test_samples_are_seeded_nested_and_shared_between_entries(tmp_path):
    data = _spec(tmp_path)
    tasks = plan_corpus(spec_from_dict(data))
    prefill = [r.id for r in tasks[0].records]
    refusal = [r.id for r in tasks[-1].records]
    assert prefill == refusal  # the hard negatives answer the same harmful prompts
    data["entries"][0]["count"] = 2
    fewer = [r.id for r in plan_corpus(spec_from_dict(data))[0].records]
    assert set(fewer) < set(prefill)
    data["seed"] = 4
    assert [r.id for r in plan_corpus(spec_from_dict(data))[0].records] != prefill or len(prefill) == 5


# --- the build -------------------------------------------------------------------------------------------------

def test_build_writes_the_planned_rows(tmp_path, model_tok):
    _, tok = model_tok
    spec = load_spec(str(_write_spec(tmp_path)))
    out = tmp_path / "out"
    result = _build(model_tok, spec, out)
    assert sorted(os.listdir(out)) == ["continuations.config.json", "continuations.jsonl", "corpus_spec.json"]
    rows = load_jsonl(out / "continuations.jsonl")
    by_entry: dict[int, list] = {}
    for r in rows:
        by_entry.setdefault(r.meta["corpus_entry"], []).append(r)
    assert [len(by_entry.get(i, [])) for i in range(1, 6)] == [8, 3, 3, 4, 2]
    for r in by_entry[1] + by_entry[4]:
        assert r.kind == "prefill" and r.opener in OPENERS and r.id.endswith(f"#prefill{OPENERS.index(r.opener)}")
        forced = encode_response(tok, r.prompt_ids, r.opener)
        assert r.response_ids[:len(forced)] == forced and len(r.response_ids) - len(forced) <= 6
    assert {r.label for r in by_entry[1]} == {"harmful"} and {r.label for r in by_entry[4]} == {"benign"}
    assert all(r.kind == "dataset" and r.source == "harm.jsonl" and r.response.startswith("Here is how")
               for r in by_entry[2])
    assert all(r.kind == "own" and r.source == "kind.jsonl:own" and r.opener == "" for r in by_entry[3])
    refusals = by_entry.get(6, [])
    assert 0 < len(refusals) < 4  # the judge kept some of the 4 answers
    assert all(r.kind == "refusal" and r.label == "benign" and r.meta["prompt_label"] == "harmful"
               and r.source == "harm.jsonl:refusal" and judge(r.response) and len(r.response_ids) <= 4 for r in refusals)
    assert len({r.id for r in rows}) == len(rows)
    config = json.loads((out / "continuations.config.json").read_text())
    import hashlib

    assert config["spec_sha256"] == hashlib.sha256((out / "corpus_spec.json").read_bytes()).hexdigest()
    assert config["spec_sha256"] == spec.sha256() and config["status"] == "complete"
    assert config["spec"]["entries"][0]["openers"] == OPENERS
    assert [e["rows"] for e in config["entries"]] == [8, 3, 3, 4, 2, len(refusals)]
    assert [e["planned"] for e in config["entries"]] == [8, 3, 3, 4, 2, 4]
    assert result["rows"] == len(rows)


def test_waves_are_plan_slices_that_share_the_decoder(tmp_path, model_tok, monkeypatch):
    """Own-generation batches of several entries decode in one pass (small entries fill the batch); the slices
    are consecutive, closed at the row count, and the rows equal a build that decodes each batch alone."""
    from interp.corpus import build
    from interp.generate import decode as dec

    spec = load_spec(str(_write_spec(tmp_path)))
    plan = build.batches(plan_corpus(spec), 2, spec.seed)
    for rows in (1, 4, 6, 100):
        cut = build.waves(plan, rows)
        assert [b for w in cut for b in w] == plan
        own = [sum(len(b.records) for b in w if b.task.entry.kind != "dataset") for w in cut]
        assert all(n >= rows for n in own[:-1]) and (rows > 1 or all(n <= 2 for n in own))
    calls = []
    real = dec.decode
    monkeypatch.setattr(dec, "decode", lambda model, prompts, *a, **k: calls.append(len(prompts)) or real(
        model, prompts, *a, **k))
    _build(model_tok, spec, tmp_path / "together", wave_rows=100)
    assert calls == [8 + 3 + 4 + 4]  # prefill x2 openers, own, prefill x2 on benign, refusal prompts
    calls.clear()
    _build(model_tok, spec, tmp_path / "alone", wave_rows=1)  # each batch decoded alone, as before waves
    assert max(calls) <= 2
    assert (tmp_path / "alone" / journal.ROWS).read_bytes() == (tmp_path / "together" / journal.ROWS).read_bytes()


def _interrupt(monkeypatch, after: int, where: str):
    """Make the ``after``-th write to ``where`` (rows or progress file) be the last: raise right after it."""
    append, calls = journal.append_lines, [0]

    def failing(path, lines):
        append(path, lines)
        if path.name == where:
            calls[0] += 1
            if calls[0] == after:
                raise KeyboardInterrupt

    monkeypatch.setattr(journal, "append_lines", failing)


def test_build_reports_each_waves_decode_with_its_engine(tmp_path, model_tok, capsys):
    """With progress on, each wave that generates prints one line: its tokens and rate, the engine, the rows in
    flight and where the time went; the files equal a quiet build's."""
    model, tok = model_tok
    spec = load_spec(str(_write_spec(tmp_path)))
    quiet = _build(model_tok, spec, tmp_path / "quiet")
    loud = write_corpus(model, tok, spec, tmp_path / "loud", model_provenance={"model_id": "tiny-qwen2"},
                        batch_size=2, progress=True, judge=judge, wave_rows=100)
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("wave ")]
    assert len(lines) == 1 and re.match(r"wave 1/1: \d+ tokens in \d+ s \([\d.]+ tokens/s\); slots engine, 2 rows "
                                        r"in flight: prefills: ", lines[0])
    assert quiet["rows"] == loud["rows"]
    assert _files(tmp_path / "quiet")["continuations.jsonl"] == _files(tmp_path / "loud")["continuations.jsonl"]


@pytest.mark.parametrize("after, where, torn", [(3, journal.ROWS, False), (5, journal.PROGRESS, False),
                                               (4, journal.ROWS, True), (5, journal.PROGRESS, "cut")],
                         ids=["after-rows-before-progress", "between-batches", "torn-last-line",
                              "recorded-batch-lost-its-last-row"])
def test_interrupted_build_resumes_to_identical_files(tmp_path, model_tok, monkeypatch, after, where, torn):
    spec = load_spec(str(_write_spec(tmp_path)))
    _build(model_tok, spec, tmp_path / "whole")
    with monkeypatch.context() as m:
        _interrupt(m, after, where)
        with pytest.raises(KeyboardInterrupt):
            _build(model_tok, spec, tmp_path / "resumed")
    rows_path = tmp_path / "resumed" / journal.ROWS
    if torn == "cut":  # a whole row of a batch the progress file records is gone (cut back by hand, a bad disk)
        data = rows_path.read_bytes()
        rows_path.write_bytes(data[:data.rstrip(b"\n").rfind(b"\n") + 1])
    elif torn:
        data = rows_path.read_bytes()
        rows_path.write_bytes(data[:-25])  # killed in the middle of writing the last row
    assert (tmp_path / "resumed" / journal.PROGRESS).exists()
    _build(model_tok, spec, tmp_path / "resumed")
    assert _files(tmp_path / "resumed") == _files(tmp_path / "whole")


def test_killed_build_resumes_to_identical_files(tmp_path):
    """SIGKILL in a subprocess after the 4th batch's rows hit the disk, before its progress line; rerun."""
    spec = _write_spec(tmp_path)
    worker = [sys.executable, str(HERE / "corpus_worker.py"), str(spec)]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    whole = subprocess.run([*worker, str(tmp_path / "whole")], capture_output=True, text=True, env=env)
    assert whole.returncode == 0, whole.stderr
    killed = subprocess.run([*worker, str(tmp_path / "resumed"), "4"], capture_output=True, text=True, env=env)
    assert killed.returncode == -9, killed.stderr
    assert len(journal.read_lines(tmp_path / "resumed" / journal.ROWS)) == 8  # two batches of two per opener
    resumed = subprocess.run([*worker, str(tmp_path / "resumed")], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout == whole.stdout
    assert _files(tmp_path / "resumed") == _files(tmp_path / "whole")


def test_resume_refuses_another_spec_or_batch_size(tmp_path, model_tok, monkeypatch):
    spec = load_spec(str(_write_spec(tmp_path)))
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _interrupt(m, 2, journal.PROGRESS)
        with pytest.raises(KeyboardInterrupt):
            _build(model_tok, spec, out)
    before = _files(out)
    changed = load_spec(str(_write_spec(tmp_path, max_new_tokens=7)))
    with pytest.raises(UserError, match=r"was built from another corpus spec \(sha256 \w+…, this one \w+…; "
                                        r"saved as .*corpus_spec.json\); resume with that spec"):
        _build(model_tok, changed, out)
    model, tok = model_tok
    with pytest.raises(UserError, match="was started with gen_batch_size=2, this run has 3"):
        write_corpus(model, tok, spec, out, model_provenance={"model_id": "tiny-qwen2"}, batch_size=3,
                     progress=False, judge=judge)
    from interp.generate import decode as dec

    with monkeypatch.context() as m:  # another decode engine (bf16 tokens may part at near-ties): not mixed
        m.setattr(dec, "default_engine", lambda model: "cache")
        with pytest.raises(UserError, match="was started with gen_engine='slots', this run has 'cache'"):
            write_corpus(model, tok, spec, out, model_provenance={"model_id": "tiny-qwen2"}, batch_size=2,
                         progress=False, judge=judge)
    with pytest.raises(UserError, match="was started with model_id='tiny-qwen2', this run has 'other'"):
        write_corpus(model, tok, spec, out, model_provenance={"model_id": "other"}, batch_size=2,
                     progress=False, judge=judge)
    assert _files(out) == before  # nothing written by a refused resume
    _build(model_tok, spec, out)
    done = _files(out)
    _build(model_tok, spec, out)  # a finished corpus: nothing to do
    assert _files(out) == done


def test_folder_with_foreign_rows_is_refused(tmp_path, model_tok):
    spec = load_spec(str(_write_spec(tmp_path)))
    out = tmp_path / "out"
    out.mkdir()
    (out / journal.ROWS).write_text('{"id": "x"}\n')
    with pytest.raises(UserError, match="not a corpus build folder"):
        _build(model_tok, spec, out)


# --- the command -----------------------------------------------------------------------------------------------

def test_cli_builds_and_resumes_with_a_bad_spec_refused_first(tmp_path, model_tok, capsys):
    model, tok = model_tok
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    data = _spec(tmp_path)
    data["entries"] = data["entries"][:3]
    spec = tmp_path / "small.yaml"
    import yaml

    spec.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    argv = ["corpus", "--spec", str(spec), "--out", str(out), "--model", str(tmp_path / "tiny"),
            "--gen-batch-size", "2"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "3 " in printed and f"14 rows in {out}" in printed
    assert len(load_jsonl(out / journal.ROWS)) == 14
    config = json.loads((out / journal.CONFIG).read_text())
    assert config["config"]["corpus"]["gen_batch_size"] == 2 and config["model_provenance"]["tokenizer_sha256"]
    store = tmp_path / "store.h5"  # extraction reads the corpus unchanged
    assert cli_main(["extract", "--model", str(tmp_path / "tiny"), "--continuations", str(out / journal.ROWS),
                     "--depths", "0:8:4", "--layers", "0", "--out", str(store)]) == 0
    from interp.extract.store import ActivationStore

    with ActivationStore.open(store) as st:
        assert sorted(st.examples["source"]) == sorted(r.source for r in load_jsonl(out / journal.ROWS))
    capsys.readouterr()
    data["entries"][0]["openers"] = []
    spec.write_text(yaml.safe_dump(data))
    assert cli_main([*argv[:3], "--out", str(tmp_path / "new"), "--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "a prefill entry needs openers" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "new").exists()


def test_harmful_prefills_that_recover_into_refusals_are_dropped_and_counted(tmp_path, model_tok):
    """Label hygiene: a harmful prefill row whose continuation (after the opener) the judge calls a refusal is
    dropped, and the corpus config says how many; benign prefill rows are kept whatever they say."""
    from interp.corpus.build import continuation_text

    spec = load_spec(str(_write_spec(tmp_path)))
    model, tok = model_tok
    seen = []

    def refuses(text: str) -> bool:  # every continuation "recovers"; the opener itself is never judged
        seen.append(text)
        return True

    config = write_corpus(model, tok, spec, tmp_path / "out", model_provenance={"model_id": "tiny-qwen2"},
                          batch_size=2, progress=False, judge=refuses)
    rows = load_jsonl(tmp_path / "out" / "continuations.jsonl")
    entries = {e["entry"]: e for e in config["entries"]}
    assert not [r for r in rows if r.meta["corpus_entry"] == 1]  # all 8 harmful prefills dropped ...
    assert entries[1]["dropped_recovered_refusals"] == 8 == config["dropped_recovered_refusals"]  # ... and counted
    assert len([r for r in rows if r.meta["corpus_entry"] == 4]) == 4  # benign prefills kept
    assert entries[6]["rows"] == 4 and entries[6]["dropped_not_refusals"] == 0  # refusal entries: all "refusals"
    assert not any(t.lstrip().startswith(tuple(o.strip() for o in OPENERS)) for t in seen[:8])
    row = next(r for r in load_jsonl(tmp_path / "out" / "continuations.jsonl") if r.kind == "prefill")
    assert continuation_text(row) == row.response.lstrip()[len(row.opener):]


def test_a_second_build_into_the_same_folder_is_refused_while_the_first_runs(model_tok, tmp_path):
    """Two `anydepth corpus` runs into one --out interleaved their rows (issue 33 item 1); the second now stops."""
    from interp.corpus.journal import LOCK, build_lock

    spec = load_spec(str(_write_spec(tmp_path)))
    out = tmp_path / "out"
    with build_lock(out):  # the first build, still running
        with pytest.raises(UserError, match=rf"{out} is being built by pid {os.getpid()}; wait for it"):
            _build(model_tok, spec, out)
        assert sorted(p.name for p in out.iterdir()) == [LOCK]  # the second wrote nothing
    config = _build(model_tok, spec, out)  # free again: builds, and leaves no lock file behind
    assert config["status"] == "complete" and not (out / LOCK).exists()


def test_an_opener_forced_on_one_class_only_is_warned_about():
    import warnings

    entries = [{"source": "advbench", "kind": "prefill", "label": "harmful", "count": 2,
                "openers": ["Sure, here is", "1."]},
               {"source": "alpaca_eval", "kind": "prefill", "label": "benign", "count": 2, "openers": ["Sure, here is"]}]
    with pytest.warns(UserWarning, match=r"opener\(s\) '1\.' appear only on harmful prefill rows"):
        spec_from_dict({"name": "s", "entries": entries})
    entries[1]["openers"] = ["Sure, here is", "1."]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec_from_dict({"name": "s", "entries": entries})
        for name in ("demo", "default"):  # the shipped recipes force the same openers on both classes
            load_spec(name)
