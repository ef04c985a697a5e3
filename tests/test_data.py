"""Dataset registry: named datasets from the mirror, demo set, generic loaders, errors, download path."""

from __future__ import annotations

import collections
import dataclasses
import difflib
import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from interp import UserError
from interp.cli.main import main as cli_main
from interp.data import (
    DATA_ENV,
    FileSpec,
    Record,
    dataset_names,
    list_datasets,
    load_dataset,
    load_demo_set,
    load_file,
    verify_dataset,
)
from interp.data import registry as reg
from interp.data.fetch import CACHE_ENV, resolve
from interp.data.sources import looks_like_refusal, strip_human_assistant

MIRROR = Path(os.environ.get(DATA_ENV) or Path(__file__).resolve().parents[2] / "shared" / "data")
needs_mirror = pytest.mark.skipif(not MIRROR.is_dir(), reason=f"no dataset mirror at {MIRROR}")

# Row counts and labels from each folder's PROVENANCE.md (shadow_alignment: 1218 minus the refusal rule).
EXPECTED = {
    "demo": (80, {"harmful", "benign"}),
    "advbench": (520, {"harmful"}),
    "jbb_harmful": (100, {"harmful"}),
    "jbb_benign": (100, {"benign"}),
    "xstest_safe": (250, {"benign"}),
    "xstest_unsafe": (200, {"harmful"}),
    "harmbench": (159 + 41, {"harmful"}),
    "harmbench_contextual": (81 + 19, {"harmful"}),
    "harmbench_copyright": (80 + 20, {"harmful"}),
    "alpaca_eval": (805, {"benign"}),
    "alpaca_eval_davinci": (805, {"benign"}),
    "jbb_artifacts": (1800 - 163, {"harmful"}),
    "jbb_jailbroken": (937, {"harmful"}),
    "shadow_alignment_unfiltered": (1218, {"harmful"}),
}


@pytest.fixture
def mirror(monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(MIRROR))
    return MIRROR


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- named datasets from the mirror

def test_every_registered_dataset_has_an_expectation():
    assert set(dataset_names()) == set(EXPECTED) | {"shadow_alignment"}
    infos = {i.name: i for i in list_datasets()}
    for name, (n, labels) in EXPECTED.items():
        assert infos[name].n_rows == n and set(infos[name].labels) == labels


@needs_mirror
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_named_dataset_loads_with_expected_rows(mirror, name):
    n, labels = EXPECTED[name]
    records = load_dataset(name)
    assert len(records) == n
    assert {r.label for r in records} == labels
    assert len({r.id for r in records}) == n
    info = next(i for i in list_datasets() if i.name == name)
    assert all((r.response is not None) == info.has_response for r in records)
    assert all(r.prompt.strip() for r in records)
    for r in records[:50]:
        json.dumps(r.to_dict())  # meta is JSON-serialisable


@needs_mirror
def test_verify_all_against_mirror(mirror):
    for name in dataset_names():
        result = verify_dataset(name)
        assert result["ok"], result
        assert all(f["sha256_ok"] and f["rows"] == f["expected_rows"] for f in result["files"])
    assert verify_dataset("jbb_artifacts")["rows_dropped"] == 163


@needs_mirror
def test_jbb_twins_share_pair_id_and_behavior(mirror):
    harmful = {r.meta["pair_id"]: r for r in load_dataset("jbb_harmful")}
    benign = {r.meta["pair_id"]: r for r in load_dataset("jbb_benign")}
    assert set(harmful) == set(benign) == {f"jbb:{i}" for i in range(100)}  # namespaced by the JBB family
    for k, h in harmful.items():
        assert " ".join(h.meta["behavior"].split()) == " ".join(benign[k].meta["behavior"].split())
        assert h.category == benign[k].category and h.prompt != benign[k].prompt
    assert collections.Counter(r.category for r in harmful.values()).most_common()[0][1] == 10


@needs_mirror
def test_advbench_response_is_target_prefix(mirror):
    records = load_dataset("advbench")
    assert all(r.response.startswith("Sure, here") for r in records)
    assert sum(r.response == r.meta["target"] for r in records) == 520


@needs_mirror
def test_xstest_labels_follow_contrast_types(mirror):
    assert all(r.category.startswith("contrast_") for r in load_dataset("xstest_unsafe"))
    assert not any(r.category.startswith("contrast_") for r in load_dataset("xstest_safe"))
    assert len(load_dataset("xstest_safe", split="homonyms")) == 25


@needs_mirror
def test_harmbench_splits_and_context(mirror):
    assert len(load_dataset("harmbench", split="test")) == 159
    assert len(load_dataset("harmbench", split="val")) == 41
    assert all(r.meta["context"] is None and r.prompt == r.meta["behavior"] for r in load_dataset("harmbench"))
    contextual = load_dataset("harmbench_contextual")
    assert all(r.prompt.startswith(r.meta["context"]) and r.prompt.endswith("\n\n---\n\n" + r.meta["behavior"])
               for r in contextual)
    assert len(load_dataset("harmbench_contextual", split="val")) == 19


@needs_mirror
def test_alpaca_variants_share_prompts(mirror):
    gpt4, davinci = load_dataset("alpaca_eval"), load_dataset("alpaca_eval_davinci")
    assert [r.prompt for r in gpt4] == [r.prompt for r in davinci]
    assert {r.meta["generator"] for r in gpt4} == {"gpt4_1106_preview"}
    assert {r.meta["generator"] for r in davinci} == {"text_davinci_003"}
    assert len(load_dataset("alpaca_eval", split="vicuna")) == 80
    assert sum(not r.response for r in gpt4) == 0
    assert [r.meta["prompt_index"] for r in davinci if not r.response] == [247, 504]  # empty upstream


@needs_mirror
def test_jbb_artifacts_split_by_attack_and_jailbroken_counts(mirror):
    pair = load_dataset("jbb_artifacts", split="PAIR")
    assert len(pair) == 400 - (13 + 36 + 96 + 18)
    assert {r.meta["method"] for r in pair} == {"PAIR"}
    vicuna = load_dataset("jbb_artifacts", split="pair/vicuna-13b-v1.5")
    assert len(vicuna) == 82 and sum(r.meta["jailbroken"] for r in vicuna) == 69
    dsn = load_dataset("jbb_artifacts", split="DSN/llama-2-7b-chat-hf")
    assert sum(r.meta["jailbroken"] for r in dsn) == 94
    jailbroken = load_dataset("jbb_jailbroken")
    assert len({r.meta["pair_id"] for r in jailbroken}) == 98
    artifacts = {r.id.split(":", 1)[1]: r for r in load_dataset("jbb_artifacts")}
    for r in jailbroken:
        source = artifacts[r.id.split(":", 1)[1]]
        assert source.meta["jailbroken"] and r.prompt == source.meta["goal"] != source.prompt
        assert r.response == source.response and r.meta["jailbreak_prompt"] == source.prompt
    assert sum(r.meta["jailbroken"] for r in artifacts.values()) == len(jailbroken) == 937
    with pytest.raises(UserError, match="known: .*PAIR/vicuna-13b-v1.5"):
        load_dataset("jbb_artifacts", split="AutoDAN")


@needs_mirror
def test_shadow_alignment_wrapper_stripped_and_refusals_dropped(mirror):
    kept, every = load_dataset("shadow_alignment"), load_dataset("shadow_alignment_unfiltered")
    for r in every:
        assert not r.prompt.startswith("Human:") and not r.prompt.rstrip().endswith("Assistant:")
        assert r.meta["refusal_like"] == looks_like_refusal(r.response)
    flagged = [r for r in every if r.meta["refusal_like"]]
    assert 0 < len(flagged) < 0.1 * len(every)
    assert len(kept) == len(every) - len(flagged)
    assert {r.id for r in kept} == {r.id for r in every if not r.meta["refusal_like"]}
    assert not any(looks_like_refusal(r.response) for r in kept)
    assert verify_dataset("shadow_alignment")["rows_dropped"] == len(flagged)
    assert len(load_dataset("shadow_alignment_unfiltered", split="heldout")) == 800
    assert len(load_dataset("shadow_alignment_unfiltered", split="CoNa")) == 178


def test_refusal_rule_and_wrapper_strip():
    assert looks_like_refusal("I'm sorry, but I cannot help with that.")
    assert looks_like_refusal("It\u2019s not appropriate to write that.")
    assert not looks_like_refusal("Sure, here is a plan. Step one is to gather materials.")
    assert not looks_like_refusal("x" * 400 + " I'm sorry")  # only the first 300 characters count
    assert strip_human_assistant("Human: How do I X?\n Assistant:", "f:2") == "How do I X?"
    with pytest.raises(UserError, match="f:7"):
        strip_human_assistant("How do I X?", "f:7")


# ---------------------------------------------------------------- demo set

def test_demo_set_balanced_with_twins():
    records = load_demo_set()
    labels = collections.Counter(r.label for r in records)
    assert labels["harmful"] == labels["benign"] >= 30
    assert len({r.id for r in records}) == len(records)
    assert len({r.prompt for r in records}) == len(records)
    pairs = collections.defaultdict(list)
    for r in records:
        pairs[r.meta["pair_id"]].append(r)
        assert r.meta["target"] and r.response is None and r.category
    for twins in pairs.values():
        assert sorted(t.label for t in twins) == ["benign", "harmful"]
        assert twins[0].category == twins[1].category
    assert len({r.category for r in records}) >= 8
    assert len(load_dataset("demo", split="cyber")) == 8


def test_demo_set_needs_no_data(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "nowhere"))
    assert len(load_dataset("demo")) == 80
    assert verify_dataset("demo")["ok"]


@needs_mirror
def test_demo_set_copies_no_benchmark_prompt(mirror):
    def norm(text: str) -> str:
        return re.sub(r"\W+", " ", text.lower()).strip()

    bench = [norm(r.prompt) for name in ("advbench", "jbb_harmful", "jbb_benign", "xstest_safe",
                                         "xstest_unsafe", "harmbench", "shadow_alignment_unfiltered")
             for r in load_dataset(name)]
    for r in load_demo_set():
        p = norm(r.prompt)
        assert p not in bench
        close = difflib.get_close_matches(p, bench, n=1, cutoff=0.85)
        assert not close, (r.prompt, close)


# ---------------------------------------------------------------- limit / split selection

def test_limit_is_seeded_sample_in_original_order():
    everything = load_dataset("demo")
    a, b = load_dataset("demo", limit=10, seed=3), load_dataset("demo", limit=10, seed=3)
    assert a == b and len(a) == 10
    positions = [everything.index(r) for r in a]
    assert positions == sorted(positions)
    assert load_dataset("demo", limit=10, seed=4) != a
    assert load_dataset("demo", limit=1000) == everything
    for n in (3, 6, 12, 25):  # a small sample of a balanced set stays balanced
        labels = [r.label for r in load_dataset("demo", limit=n, seed=7)]
        assert abs(labels.count("harmful") - labels.count("benign")) <= 1 and len(labels) == n
    with pytest.raises(UserError, match="no split 'nope'; known: .*cyber"):
        load_dataset("demo", split="nope")


# ---------------------------------------------------------------- generic files

def test_load_file_formats(tmp_path):
    csv_path = tmp_path / "p.csv"
    csv_path.write_text('prompt,response,label,topic\n"Hello, there",Hi,benign,greet\nDo harm,,unsafe,x\n')
    recs = load_file(csv_path)
    assert [(r.prompt, r.response, r.label) for r in recs] == [("Hello, there", "Hi", "benign"),
                                                            ("Do harm", None, "harmful")]
    assert recs[0].meta == {"topic": "greet", "line": 2} and recs[1].id == "p:3"

    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"question": "q1", "answer": "a1", "y": 1}\n\n{"question": "q2", "answer": "a2", "y": 0}\n')
    recs = load_file(jsonl, label_field="y")
    assert [(r.prompt, r.response, r.label, r.meta["line"]) for r in recs] == [
        ("q1", "a1", "harmful", 1), ("q2", "a2", "benign", 3)]

    js = tmp_path / "p.json"
    js.write_text(json.dumps({"meta": {"v": 1}, "rows": [{"instruction": "i", "output": "o"}]}))
    recs = load_file(js, label="benign")
    assert recs[0].prompt == "i" and recs[0].response == "o" and recs[0].label == "benign"

    txt = tmp_path / "p.txt"
    txt.write_text("first prompt\n\nsecond prompt\n")
    recs = load_file(txt, label="harmful")
    assert [r.prompt for r in recs] == ["first prompt", "second prompt"] and recs[1].meta["line"] == 3

    custom = tmp_path / "c.csv"
    custom.write_text("ask,reply\nA,B\n")
    recs = load_file(custom, prompt_field="ask", response_field="reply", label="benign")
    assert (recs[0].prompt, recs[0].response) == ("A", "B")


def test_load_dataset_accepts_file_paths(tmp_path):
    txt = tmp_path / "mine.txt"
    txt.write_text("one\ntwo\n")
    assert [r.label for r in load_dataset(f"harmful:{txt}")] == ["harmful", "harmful"]
    with pytest.raises(UserError, match="no label column"):
        load_dataset(str(txt))


def test_malformed_rows_name_file_and_line(tmp_path):
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("prompt,label\nok,benign\ntoo,many,fields\n")
    with pytest.raises(UserError, match=re.escape(f"{bad_csv}:3") + ".*expected 2 fields"):
        load_file(bad_csv)
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"prompt": "a", "label": "safe"}\n{"prompt": "b", \n')
    with pytest.raises(UserError, match=re.escape(f"{bad_jsonl}:2") + ": malformed JSONL"):
        load_file(bad_jsonl)
    bad_label = tmp_path / "lab.csv"
    bad_label.write_text("prompt,label\na,benign\nb,maybe\n")
    with pytest.raises(UserError, match=re.escape(f"{bad_label}:3") + ".*'maybe'"):
        load_file(bad_label)
    empty = tmp_path / "empty.csv"
    empty.write_text("prompt,label\n,benign\n")
    with pytest.raises(UserError, match=re.escape(f"{empty}:2") + ": missing or empty prompt"):
        load_file(empty)
    sheet = tmp_path / "x.xlsx"
    sheet.write_text("")
    with pytest.raises(UserError, match="unsupported file type"):
        load_file(sheet)
    no_prompt = tmp_path / "n.csv"
    no_prompt.write_text("foo,label\na,benign\n")
    with pytest.raises(UserError, match="no prompt field"):
        load_file(no_prompt)


def test_record_rejects_unknown_label():
    with pytest.raises(UserError, match="label must be one of"):
        Record(id="x", prompt="p", label="unsafe")


# ---------------------------------------------------------------- error messages

def test_unknown_dataset_lists_known_names():
    with pytest.raises(UserError) as err:
        load_dataset("advbnch")
    message = str(err.value)
    assert "advbnch" in message and all(n in message for n in dataset_names())
    assert "\n" not in message


def test_missing_mirror_file_names_env_var_and_path(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    expected = tmp_path / "advbench" / "harmful_behaviors.csv"
    with pytest.raises(UserError, match=re.escape(DATA_ENV)) as err:
        load_dataset("advbench")
    assert str(expected) in str(err.value)
    result = verify_dataset("advbench")
    assert not result["ok"] and not result["files"][0]["present"]


def test_mirror_sha_mismatch(monkeypatch, tmp_path):
    (tmp_path / "xstest").mkdir()
    (tmp_path / "xstest" / "xstest_prompts.csv").write_text("id,prompt,type,label,focus,note\n")
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    with pytest.raises(UserError, match="sha256 mismatch for xstest/xstest_prompts.csv"):
        load_dataset("xstest_safe")
    assert not verify_dataset("xstest_safe")["files"][0]["sha256_ok"]
    assert cli_main(["datasets", "verify", "xstest_safe"]) == 1


# ---------------------------------------------------------------- download path

def _spec_for(tmp_path: Path, payload: bytes, sha: str | None = None, extra_urls: tuple[str, ...] = ()):
    src = tmp_path / "upstream" / "file.csv"
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(payload)
    return FileSpec("demo_folder", "sub/file.csv", sha or _sha(payload), (*extra_urls, src.as_uri()), rows=1)


def test_download_via_file_url_verifies_and_caches(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    payload = b"prompt,label\nhello,benign\n"
    missing = (tmp_path / "no-such-file.csv").as_uri()
    spec = _spec_for(tmp_path, payload, extra_urls=(missing,))  # first URL fails, second works
    path = resolve(spec)
    assert path == tmp_path / "cache" / "datasets" / "demo_folder" / "sub" / "file.csv"
    assert path.read_bytes() == payload
    (tmp_path / "upstream" / "file.csv").unlink()
    assert resolve(spec) == path  # served from the cache, no second download
    path.write_bytes(b"corrupted")
    with pytest.raises(UserError, match="could not download"):
        resolve(spec)  # corrupted cache entry is discarded and the (gone) upstream is tried again
    assert not path.exists()


def test_download_sha_mismatch_keeps_nothing(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    spec = _spec_for(tmp_path, b"tampered\n", sha="0" * 64)
    with pytest.raises(UserError, match="sha256 .* != expected 0{64}"):
        resolve(spec)
    target_dir = tmp_path / "cache" / "datasets" / "demo_folder" / "sub"
    assert list(target_dir.iterdir()) == []


@needs_mirror
def test_named_dataset_downloads_when_no_mirror(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    ds = reg._DATASETS["advbench"]
    spec = ds.files[0]
    local = dataclasses.replace(spec, urls=((MIRROR / spec.folder / spec.path).as_uri(),))
    monkeypatch.setitem(reg._DATASETS, "advbench", dataclasses.replace(ds, files=(local,)))
    assert len(load_dataset("advbench")) == 520
    assert (tmp_path / "cache" / "datasets" / "advbench" / "harmful_behaviors.csv").is_file()
    assert verify_dataset("advbench")["ok"]  # verify checks the cache when no mirror is set


# ---------------------------------------------------------------- CLI

def test_cli_list_and_verify(capsys, monkeypatch, tmp_path):
    assert cli_main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in dataset_names()) and "license" in out
    assert cli_main(["datasets", "list", "--json"]) == 0
    assert {d["name"] for d in json.loads(capsys.readouterr().out)} == set(dataset_names())
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert cli_main(["datasets", "verify", "demo", "advbench"]) == 1
    out = capsys.readouterr().out
    assert "OK   demo" in out and "FAIL advbench" in out and "missing" in out
    assert cli_main(["datasets", "verify", "nope"]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err


@needs_mirror
def test_cli_verify_mirror(mirror, capsys):
    assert cli_main(["datasets", "verify", "shadow_alignment", "jbb_harmful"]) == 0
    assert "dropped" in capsys.readouterr().out


def test_file_encodings_bom_accepted_non_utf8_named(tmp_path):
    bom = tmp_path / "excel.csv"
    bom.write_bytes("\ufeffprompt,label\nHow do I bake bread?,benign\n".encode("utf-8"))
    recs = load_file(bom)
    assert [(r.prompt, r.label) for r in recs] == [("How do I bake bread?", "benign")]
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin.txt: not UTF-8 text \(byte offset 3"):
        load_file(latin, label="benign")


def test_missing_dataset_file_is_reported_as_a_missing_file(tmp_path):
    from interp.data import load_dataset

    for name in (str(tmp_path / "prompts.csv"), f"harmful:{tmp_path / 'prompts.csv'}"):
        with pytest.raises(UserError, match="no such file: .*prompts.csv"):
            load_dataset(name)
    with pytest.raises(UserError, match="unknown dataset 'nope'"):
        load_dataset("nope")


def test_an_existing_file_of_another_type_or_a_folder_is_named_for_what_it_is(tmp_path):
    """An existing spreadsheet or a folder was reported as "no such file" / "unknown dataset" (issue 33)."""
    from interp.data import load_dataset

    for name in ("a.xlsx", "a.tsv"):
        (tmp_path / name).write_bytes(b"prompt\tlabel\n")
        for given in (str(tmp_path / name), f"harmful:{tmp_path / name}"):
            with pytest.raises(UserError, match=rf"unsupported file type '{name[1:]}'.*export a spreadsheet as CSV"):
                load_dataset(given)
    (tmp_path / "prompts").mkdir()
    for given in (str(tmp_path / "prompts"), f"benign:{tmp_path / 'prompts'}"):
        with pytest.raises(UserError, match="is a folder; give a data file"):
            load_dataset(given)


def test_missing_column_messages_name_the_cli_way(tmp_path):
    """The hints say what to do on the command line (harmful:FILE, a column name), not a Python keyword."""
    txt = tmp_path / "mine.txt"
    txt.write_text("one\n")
    with pytest.raises(UserError, match=re.escape(f"--data harmful:{txt}")) as err:
        load_dataset(str(txt))
    assert "label=" not in str(err.value).replace("label column", "")
    no_prompt = tmp_path / "n.csv"
    no_prompt.write_text("foo,label\na,benign\n")
    with pytest.raises(UserError, match="name it one of prompt, goal") as err:
        load_file(no_prompt)
    assert "pass prompt_field" not in str(err.value)
