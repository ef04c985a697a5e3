"""Random insertion rows: the two-pass build, per-depth labels through the store, and probes fitted on them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from interp import UserError
from interp.corpus.build import write_corpus
from interp.corpus.insertion import (
    HOST_TOKENS,
    add_depth_labels,
    cut_host,
    depth_labels,
    forced_text,
    harmful_span,
)
from interp.corpus.plan import plan_corpus
from interp.corpus.spec import spec_from_dict
from interp.data.records import Record
from interp.generate.continuations import generate_continuations, load_jsonl
from interp.spans.derive import encode_response
from interp.testing import tiny_model


@pytest.fixture(scope="module")
def model_tok():
    return tiny_model("qwen2", n_layers=2, d_model=64, seed=5)


def _harmful_source(folder: Path) -> Path:
    """4 harmful prompts, 3 with a response to insert (the first line of it, at most SPAN_WORDS words)."""
    path = folder / "harm.jsonl"
    rows = [{"prompt": f"do a bad thing number {i}", "label": "harmful",
             **({"response": f"Here is how to do bad thing {i}: step one.\nStep two."} if i < 3 else {})}
            for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _spec(folder: Path, count: int = 3) -> dict:
    return {"name": "ins", "seed": 1, "max_new_tokens": 5, "entries": [
        {"source": str(_harmful_source(folder)), "kind": "insertion", "label": "harmful", "count": count}]}


def test_span_and_cut_are_the_documented_pieces():
    rec = Record(id="r", prompt="p", label="harmful", response="\n  first line with words\nsecond line")
    assert harmful_span(rec) == "first line with words"
    long = Record(id="r", prompt="p", label="harmful", response=" ".join(f"w{i}" for i in range(40)))
    assert harmful_span(long).split() == [f"w{i}" for i in range(24)]
    target = Record(id="r", prompt="p", label="harmful", meta={"target": "Sure, here is"})
    assert harmful_span(target) == "Sure, here is"
    assert harmful_span(Record(id="r", prompt="p", label="harmful")) is None
    host = "I cannot help with that request."
    cuts = {cut_host(host, f"k{i}") for i in range(200)}
    assert cuts == {host[:n] for n in (1, 8, 13, 18, 23, 32)}  # every word end, and only word ends
    assert cut_host(host, "k7") == cut_host(host, "k7") and cut_host("   ", "k") == ""
    assert forced_text("I cannot", "Here is") == "I cannot Here is" and forced_text("", "Here is") == "Here is"


def test_depth_labels_switch_at_the_first_inserted_character():
    labels = np.array([1, 0, 1])
    chars = np.array([[0, 5, 10, 15, 20, 30], [0, 4, 8, 12, 16, 20], [0, 5, 10, 15, 20, 30]])
    y = depth_labels(labels, [{"start": 10}, None, {"start": 12}], chars)
    assert y.tolist() == [[0, 0, 0, 1, 1, 1], [0] * 6, [0, 0, 0, 1, 1, 1]]
    # in the store's table: the offset found again in the stored text, else the recorded one
    ex = {"label": [1, 1, 0], "response_chars": [[0, 3, 9], [0, 3, 9], [0, 3, 9]],
          "response": ["Nope SPAN after", "No. other", "kind answer"]}
    add_depth_labels(ex, [{"insertion": {"start": 2, "end": 6, "span": "SPAN"}},
                          {"insertion": {"start": 1, "end": 5, "span": "SPAN"}}, {}])
    assert ex["depth_label"].tolist() == [[0, 0, 1], [0, 1, 1], [0, 0, 0]]
    plain = {"label": [1], "response_chars": [[0, 1]], "response": ["x"]}
    add_depth_labels(plain, [{}])
    assert "depth_label" not in plain  # stores without insertion rows keep their layout


def test_insertion_entries_are_checked():
    with pytest.raises(UserError, match="give them label harmful"):
        spec_from_dict({"name": "x", "entries": [{"source": "advbench", "kind": "insertion", "label": "benign"}]})


def test_count_counts_only_prompts_with_text_to_insert(tmp_path):
    with pytest.raises(UserError, match="has 3 distinct harmful prompts with a response or target to insert"):
        plan_corpus(spec_from_dict(_spec(tmp_path, count=4)))


def test_build_inserts_the_span_into_the_models_own_refusal(tmp_path, model_tok):
    """Two passes: the model's own answer (the slow path: generate_continuations, own mode) is the host; the row
    forces its cut plus the record's span, then the model continues; hosts the judge does not call refusals and
    continuations that recover after the span are dropped and counted."""
    model, tok = model_tok
    spec = spec_from_dict(_spec(tmp_path))
    calls: list[str] = []

    def judge(text: str) -> bool:  # the first two hosts are "refusals", the third is not; no continuation recovers
        calls.append(text)
        return len(calls) <= 2

    config = write_corpus(model, tok, spec, tmp_path / "out", model_provenance={"model_id": "tiny-qwen2"},
                          batch_size=2, progress=False, judge=judge)
    rows = load_jsonl(tmp_path / "out" / "continuations.jsonl")
    records = plan_corpus(spec)[0].records
    hosts = {c.id: c.response for c in generate_continuations(model, tok, records, mode="own",
                                                               max_new_tokens=HOST_TOKENS, progress=False)}
    assert calls[:3] == [hosts[r.id] for r in records]  # the hosts, judged before any continuation
    assert len(rows) == 2 and config["entries"][0]["dropped_not_refusals_or_recovered"] == 1
    for row in rows:
        rec_id = row.id.removesuffix("#insertion")
        span = row.meta["insertion"]
        assert row.kind == "insertion" and row.label == "harmful" and row.source == "harm.jsonl:insertion"
        assert row.meta["prompt_label"] == "harmful" and span["host"] == hosts[rec_id]
        head = cut_host(hosts[rec_id], f"1|{row.id}")
        assert head and hosts[rec_id].startswith(head)
        assert span["span"] == next(r.response for r in records if r.id == rec_id).splitlines()[0]
        assert row.response[span["start"]:span["end"]] == span["span"]
        forced = encode_response(tok, row.prompt_ids, forced_text(head, span["span"]))
        assert row.response_ids[:len(forced)] == forced and len(row.response_ids) - len(forced) <= 5
        assert row.response.startswith(head)


def test_a_continuation_that_recovers_after_the_span_is_dropped(tmp_path, model_tok):
    model, tok = model_tok
    seen: list[str] = []

    def judge(text: str) -> bool:  # hosts are refusals; so is every continuation
        seen.append(text)
        return True

    config = write_corpus(model, tok, spec_from_dict(_spec(tmp_path)), tmp_path / "out",
                          model_provenance={"model_id": "tiny-qwen2"}, batch_size=2, progress=False, judge=judge)
    assert config["rows"] == 0 and config["entries"][0]["dropped_not_refusals_or_recovered"] == 3
    assert all("step one." not in t for t in seen[3:])  # only the text after the span is judged



# --- benign hosts: spans from each host's twin --------------------------------------------------------------------

def _twin_sources(folder: Path) -> tuple[Path, Path]:
    """4 benign prompts with pair ids t0..t3 (t3 has no twin) and 4 harmful twins: t0 twice (the first counts),
    t1, t2 (t2 without text to insert), x9 (no host)."""
    hosts, twins = folder / "hosts.jsonl", folder / "twins.jsonl"
    hosts.write_text("".join(json.dumps({"prompt": f"write a kind poem number {i}", "label": "benign",
                                         "pair_id": f"t{i}"}) + "\n" for i in range(4)))
    rows = [("t0", "First twin span for zero.\nmore"), ("t0", "Second twin for zero."), ("t1", "Twin span one."),
            ("t2", None), ("x9", "No host has this.")]
    twins.write_text("".join(json.dumps({"prompt": f"harmful request {k}", "label": "harmful", "pair_id": pid,
                                         **({"response": text} if text else {})}) + "\n"
                             for k, (pid, text) in enumerate(rows)))
    return hosts, twins


def _twin_spec(folder: Path, count: int | None = None) -> dict:
    hosts, twins = _twin_sources(folder)
    entry = {"source": str(hosts), "kind": "insertion", "label": "harmful", "spans": str(twins)}
    return {"name": "twins", "seed": 1, "max_new_tokens": 5,
            "entries": [{**entry, **({"count": count} if count else {})}]}


def test_spans_are_checked_and_an_unset_one_keeps_old_hashes(tmp_path):
    with pytest.raises(UserError, match="spans only apply to kind insertion"):
        spec_from_dict({"name": "x", "entries": [{"source": "jbb_benign", "kind": "own", "label": "benign",
                                                  "spans": "jbb_jailbroken"}]})
    with pytest.raises(UserError, match="unknown spans source 'nope'"):
        spec_from_dict({"name": "x", "entries": [{"source": "jbb_benign", "kind": "insertion", "label": "harmful",
                                                  "spans": "nope"}]})
    plain = spec_from_dict(_spec(tmp_path))
    assert "spans" not in plain.to_dict()["entries"][0] and "\"spans\"" not in plain.canonical_json()
    assert spec_from_dict(_twin_spec(tmp_path)).to_dict()["entries"][0]["spans"].endswith("twins.jsonl")


def test_benign_hosts_take_the_span_of_their_twin(tmp_path):
    """Hosts are the benign prompts with a twin holding text; each takes its first twin's span."""
    [task] = plan_corpus(spec_from_dict(_twin_spec(tmp_path)))
    assert [r.meta["pair_id"] for r in task.records] == ["t0", "t1"]
    assert [task.span(r.id) for r in task.records] == [("First twin span for zero.", "twins:1"),
                                                        ("Twin span one.", "twins:3")]
    with pytest.raises(UserError, match="has 2 distinct benign prompts with a twin in .*twins.jsonl"):
        plan_corpus(spec_from_dict(_twin_spec(tmp_path, count=3)))
    hosts, _ = _twin_sources(tmp_path)
    spec = _twin_spec(tmp_path)
    spec["entries"][0]["spans"] = str(hosts)  # benign records only: no span to take
    with pytest.raises(UserError, match="holds no harmful record with a pair id"):
        plan_corpus(spec_from_dict(spec))


def test_build_inserts_the_twin_span_into_every_benign_answer(tmp_path, model_tok):
    """Every own answer to a benign prompt is a host (the judge is asked only about the text after the span);
    the row is harmful from the span on, records its prompt as benign and keeps the host's pair id, so a split
    puts it in its twin's content group."""
    model, tok = model_tok
    spec = spec_from_dict(_twin_spec(tmp_path))
    judged: list[str] = []

    def judge(text: str) -> bool:
        judged.append(text)
        return False

    config = write_corpus(model, tok, spec, tmp_path / "out", model_provenance={"model_id": "tiny-qwen2"},
                          batch_size=2, progress=False, judge=judge)
    rows = load_jsonl(tmp_path / "out" / "continuations.jsonl")
    [task] = plan_corpus(spec)
    hosts = {c.id: c.response for c in generate_continuations(model, tok, task.records, mode="own",
                                                               max_new_tokens=HOST_TOKENS, progress=False)}
    assert config["rows"] == 2 and config["entries"][0]["dropped_not_refusals_or_recovered"] == 0
    assert len(judged) == 2  # no host was judged
    for row in rows:
        rec_id = row.id.removesuffix("#insertion")
        span, donor = task.span(rec_id)
        ins = row.meta["insertion"]
        assert row.label == "harmful" and row.meta["prompt_label"] == "benign" and row.kind == "insertion"
        assert ins["host"] == hosts[rec_id] and ins["span"] == span and ins["span_record"] == donor
        assert row.response[ins["start"]:ins["end"]] == span and row.response.startswith(
            cut_host(hosts[rec_id], f"1|{row.id}"))
        assert row.meta["pair_id"] == next(r.meta["pair_id"] for r in task.records if r.id == rec_id)
    assert sorted(judged) == sorted(r.response[r.meta["insertion"]["end"]:] for r in rows)


# --- probes on per-depth labels ----------------------------------------------------------------------------------

class _Inserted:
    """A synthetic store whose harmful rows of source src1 are insertion rows: benign at their first two depths,
    where the planted margin is reflected to the benign side (as a refusal before the span would read)."""

    def __init__(self):
        from interp.probes.synthetic import SyntheticSet, SyntheticSpec

        self.ss = SyntheticSet(SyntheticSpec(n_prompts=160, n_depths=5, d_model=16, n_layers=1, signal=(3.0,),
                                             margin_noise=0.3, invalid_frac=0.0, n_sources=2, seed=3))
        self.inserted = (self.ss.y == 1) & (self.ss.sources == "src1")
        self.y_depth = np.repeat(self.ss.y[:, None], 5, axis=1)
        self.y_depth[self.inserted, :2] = 0
        plain = self.ss.layer_array

        def layer_array(layer: int) -> np.ndarray:
            X, d = plain(layer), self.ss.directions[layer]
            before = self.inserted[:, None] & (np.arange(5) < 2)[None]
            X[before] -= 2 * (X[before] @ d)[:, None] * d[None]
            return X

        self.ss.layer_array = layer_array

    def write(self, path: Path) -> Path:
        from interp.probes.synthetic import write_store

        kinds = np.where(self.inserted, "insertion", "own").tolist()
        return write_store(self.ss, path, [0], 3, 2, extra_examples={"depth_label": self.y_depth, "kind": kinds})


@pytest.fixture(scope="module")
def inserted_store(tmp_path_factory):
    made = _Inserted()
    return made, made.write(tmp_path_factory.mktemp("ins") / "s.h5")


def test_store_and_layer_data_carry_the_label_of_each_depth(inserted_store):
    from interp.extract.store import ActivationStore
    from interp.probes.data import load_layer

    made, path = inserted_store
    with ActivationStore.open(path) as store:
        assert store.has_depth_labels and np.array_equal(store.depth_labels, made.y_depth)
        for pairs_only in (False, True):
            data = load_layer(store, "resid_post", 0, pairs_only=pairs_only)
            _, y, rows, cols = data.flat()
            assert np.array_equal(y, made.y_depth[rows, cols]) and np.array_equal(data.y, made.ss.y)
            part = data.subset(made.ss.sources == "src1")
            assert np.array_equal(part.label_grid, made.y_depth[made.ss.sources == "src1"])


def test_probes_are_fitted_and_scored_on_the_label_of_each_depth(inserted_store, tmp_path):
    """Per check, the benign first depths of insertion rows count as benign: the probe separates them (pooled and
    at depth 0); read with the answer's label they would be harmful pairs the probe scores low (the test fails
    if any per-pair number reads ``y`` instead of the per-depth label)."""
    from interp.probes.run import SweepConfig, sweep, train
    from interp.probes.train import TrainConfig

    made, path = inserted_store
    res = sweep(path, SweepConfig(store=str(path), baselines=[], n_boot=50, stride=10, target_fpr=0.05))
    assert res.per_layer["probe"][0]["auroc"]["value"] > 0.97
    assert res.per_depth["probe"][0][0]["auroc"]["value"] > 0.97  # depth 0: insertion rows benign there
    assert np.array_equal(res.labels, made.y_depth)
    src1 = next(r for r in res.loso["rows"] if r["source"] == "src1")
    assert src1["labels"] == ["benign", "harmful"] and src1["probe"]["auroc"]["value"] > 0.9
    probes = train(path, TrainConfig(store=str(path), n_boot=50, target_fpr=0.05, stride=10), progress=False)
    test = probes.metrics["test"]
    assert test["per_check"]["probe"]["auroc"]["value"] > 0.97
    assert test["per_depth"]["probe"][0]["auroc"] > 0.97
    assert test["per_answer"]["tpr_by_source"]["src1"]["n"] > 0  # insertion answers count as harmful answers


def test_the_position_study_refuses_per_depth_labels(inserted_store):
    from interp.extract.store import ActivationStore
    from interp.probes.positions import PositionsConfig, compare_positions

    _, path = inserted_store
    with ActivationStore.open(path) as store, pytest.raises(UserError, match="reads one label per answer"):
        compare_positions(store, PositionsConfig(), progress=False)


def test_out_of_fold_fits_see_the_label_of_each_pair(inserted_store, monkeypatch):
    """The probe is fitted on each pair's label (shuffled-label controls keep passing row labels)."""
    import interp.probes.oof as oof
    from interp.extract.store import ActivationStore
    from interp.probes.cv import grouped_folds
    from interp.probes.data import load_layer

    made, path = inserted_store
    seen = []
    real = oof.fit_probes

    def spy(X, y, masks, cfg, sources=None):
        seen.append(np.array(y))
        return real(X, y, masks, cfg, sources)

    monkeypatch.setattr(oof, "fit_probes", spy)
    with ActivationStore.open(path) as store:
        data = load_layer(store, "resid_post", 0, pairs_only=True)
    split = grouped_folds(data.y, data.groups, 3, 0)
    oof.oof_scores(data, split, oof.ProbeConfig())
    rows, cols = data.pairs()
    assert np.array_equal(seen[0], made.y_depth[rows, cols]) and not np.array_equal(seen[0], made.ss.y[rows])
    oof.oof_scores(data, split, oof.ProbeConfig(), labels=data.y)
    assert np.array_equal(seen[1], made.ss.y[rows])


def test_the_ngram_baseline_reads_the_label_of_each_pair():
    """Insertion rows say the same refusal words before the span (benign there) as refusals do; with per-pair
    labels the text classifier learns that the span's words, not the refusal's, are harmful."""
    from interp.probes.cv import grouped_folds
    from interp.probes.ngram import ngram_oof

    n = 40
    texts = np.array([[f"sorry I cannot help {i}", f"sorry I cannot help {i} here is the recipe for poison"]
                      if i % 2 else [f"sorry I cannot help {i}", f"sorry I cannot help {i} at all today"]
                      for i in range(n)], dtype=object)
    y = np.array([[0, i % 2] for i in range(n)])
    valid = np.ones((n, 2), bool)
    split = grouped_folds(y.max(1), np.arange(n), 4, 0)
    p = ngram_oof(texts, y, valid, split, progress=False)
    assert np.isfinite(p).all() and p[1::2, 1].min() > 0.5  # after the span: harmful
    assert p[:, 0].mean() < 0.25  # the refusal words alone: benign (0.49 when fitted on the answers' labels)


def test_an_interrupted_insertion_build_resumes_to_identical_files(tmp_path, model_tok, monkeypatch):
    """Both passes are redone for a torn wave, so the resumed files equal an uninterrupted build's."""
    from interp.corpus import journal

    model, tok = model_tok
    spec = spec_from_dict(_spec(tmp_path))

    def judge(text: str) -> bool:  # stateless: 48-token hosts are "refusals", 5-token continuations are not
        return len(text) > 40

    def build(out: Path) -> dict:
        return write_corpus(model, tok, spec, out, model_provenance={"model_id": "tiny-qwen2"}, batch_size=1,
                            progress=False, judge=judge)

    whole = build(tmp_path / "whole")
    assert whole["rows"] >= 2
    append = journal.append_lines

    def failing(path, lines):
        append(path, lines)
        if path.name == journal.ROWS:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(journal, "append_lines", failing)
        with pytest.raises(KeyboardInterrupt):
            build(tmp_path / "resumed")
    build(tmp_path / "resumed")
    files = {p: (tmp_path / "whole" / p).read_bytes() for p in ("continuations.jsonl", "corpus_spec.json")}
    assert files == {p: (tmp_path / "resumed" / p).read_bytes() for p in files}


def test_held_out_numbers_on_a_depth_subset_read_the_labels_of_those_depths(inserted_store):
    """Trained on depths 10..40 (not 0), the held-out per-depth numbers pair each scored depth with its own label:
    depth 20 is harmful for insertion rows, depth 10 is not."""
    from interp.probes.run import train
    from interp.probes.train import TrainConfig

    _, path = inserted_store
    ps = train(path, TrainConfig(store=str(path), n_boot=0, target_fpr=0.05, stride=10, depths=[10, 20, 30, 40]),
               progress=False)
    rows = ps.metrics["test"]["per_depth"]["probe"]
    assert [r["depth"] for r in rows] == [10, 20, 30, 40] and min(r["auroc"] for r in rows) > 0.97
