"""`anydepth demo` end to end on a tiny model: every stage runs, the report has its sections and figures, and a
rerun reuses the finished stages (config-addressed folders)."""

import json
import os

import pytest

from interp.cli.main import main
from interp.formatting import rate

ARGS = ["--spec", "none", "--limit", "40", "--max-new-tokens", "12", "--depths", "0:12:4", "--eval-depths", "0", "4", "12",
        "--eval-limit", "3", "--over-refusal-limit", "3", "--lookahead", "3", "--batch-size", "6",
        "--dtype", "float32"]  # explicit: auto is bf16 on CPUs with native bf16


def test_demo_runs_every_stage_and_reuses_them(tmp_path, capsys):
    from interp.testing import tiny_model

    model, tok = tiny_model("qwen2", n_layers=2)
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    out = tmp_path / "runs"
    assert main(["demo", "--model", str(tmp_path / "tiny"), "--out", str(out), *ARGS]) == 0
    run = out / "tiny"
    report = (run / "report.md").read_text()
    for section in ("## Leave-one-source-out", "## Split, threshold and held-out test numbers", "## Probe sweep",
                    "## Deep-prefill attack", "## Over-refusal", "## Cost", "## Stage timings"):
        assert section in report
    assert report.index("## Leave-one-source-out") < report.index("## Probe sweep")  # the report leads with it
    assert "| ngram |" in report and "on benign control" in report
    # every evaluation ran on held-out prompts only and says so
    probes = json.loads((next(run.glob("train-*")) / "probeset.json").read_text())
    from interp.probes.protocol import seen_in

    seen = seen_in(probes["split"])
    dp = json.loads((next(run.glob("evaluate-deep-prefill-*")) / "deep_prefill.json").read_text())
    assert dp["split"]["harmful"]["in_sample"] is False and dp["split"]["harmful"]["excluded"] > 0
    from interp.data import load_dataset

    by_id = {r.id: r for r in load_dataset("demo")}
    evaluated = [by_id[r["id"]] for r in dp["rows"] + dp["control_rows"]]
    assert evaluated and not [r for r in evaluated if (r.prompt, r.meta.get("pair_id")) in seen]
    for fig in ("layer_depth_auroc.png", "layer_sweep.png", "deep_prefill.png", "over_refusal.png"):
        assert (run / "figures" / fig).stat().st_size > 0
    results = json.loads((run / "results.json").read_text())
    assert (run / results["store"]).exists() and (run / results["probes"] / "probeset.json").exists()
    saved = json.loads((run / "demo_config.json").read_text())
    assert saved["eval_limit"] == 3 and saved["spec"] == "none" and saved["stride"] == 16  # resolved, as it ran
    capsys.readouterr()
    assert main(["demo", "--model", str(tmp_path / "tiny"), "--out", str(out), *ARGS]) == 0
    rerun = capsys.readouterr().out
    assert rerun.count("finished earlier, reusing") == 8
    # a changed option reruns only the stages it feeds
    assert main(["demo", "--model", str(tmp_path / "tiny"), "--out", str(out), *ARGS, "--skip-eval", "true"]) == 0
    assert "generate-demo: finished earlier" in capsys.readouterr().out
    # --dtype reaches the forward passes from extraction on; the generations are reused (their keys never had it)
    assert main(["demo", "--model", str(tmp_path / "tiny"), "--out", str(out), *ARGS[:-2], "--skip-eval", "true",
                 "--dtype", "bfloat16"]) == 0
    log = capsys.readouterr().out
    extract_line = next(line for line in log.splitlines() if "] extract" in line)
    assert "generate-demo: finished earlier" in log and "dtype=bfloat16" in extract_line
    from interp.extract.store import ActivationStore

    dtypes = set()
    for path in run.glob("extract-*/store.h5"):
        with ActivationStore.open(path) as store:
            dtypes.add(store.provenance["dtype"])
    assert dtypes == {"float32", "bfloat16"}


@pytest.fixture
def tiny_dir(tmp_path):
    from interp.testing import tiny_model

    model, tok = tiny_model("qwen2", n_layers=2)
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def test_demo_falls_back_to_the_built_in_set_and_says_so(tiny_dir, tmp_path, monkeypatch, capsys):
    """With the public sets neither mirrored nor downloadable the demo runs the built-in twin set, and the
    report and the saved config say why."""
    monkeypatch.setenv("ANYDEPTH_DATA", str(tmp_path / "empty-mirror"))
    (tmp_path / "empty-mirror").mkdir()
    out = tmp_path / "runs"
    assert main(["demo", "--model", str(tiny_dir), "--out", str(out), *ARGS[2:], "--skip-eval", "true"]) == 0
    assert "falling back to the built-in set" in capsys.readouterr().out
    run = out / "tiny"
    saved = json.loads((run / "demo_config.json").read_text())
    assert saved["spec"] == "none" and "dataset file missing" in saved["fallback"]
    assert "this run used the built-in 80-prompt twin set" in (run / "report.md").read_text()


SPEC = """name: tiny
seed: 0
max_new_tokens: 40
entries:
  - {source: advbench, kind: prefill, label: harmful, count: 6, openers: ["Sure, here is", "Certainly! Here's"]}
  - {source: shadow_alignment, kind: dataset, label: harmful, count: 8}
  - {source: jbb_benign, kind: own, label: benign, count: 6}
  - {source: jbb_benign, kind: prefill, label: benign, count: 6, openers: ["Sure, here is", "Certainly! Here's"]}
  - {source: alpaca_eval, kind: dataset, label: benign, count: 10}
  - {source: advbench, kind: insertion, label: harmful, count: 4}
  - {source: jbb_benign, kind: insertion, label: harmful, count: 3, spans: jbb_jailbroken}
"""


@pytest.mark.skipif(not os.path.isdir(os.environ.get("ANYDEPTH_DATA") or "/nonexistent"),
                    reason="needs the public sets ($ANYDEPTH_DATA mirror)")
def test_demo_on_a_corpus_spec_reports_the_targets(tiny_dir, tmp_path, capsys):
    """The corpus path end to end: corpus → extract (depths to 100) → sweep → train with --combine-top → report
    with the targets table (pooled leave-one-source-out and held-out test numbers per depth)."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "runs"
    assert main(["demo", "--model", str(tiny_dir), "--out", str(out), "--spec", str(spec), "--depths", "0,8,25:100:25",
                 "--combine-top", "2", "--target-fpr", "0.1", "--skip-eval", "true", "--gen-dtype", "model",
                 "--readout-loso", "true"]) == 0
    run = out / "tiny"
    report = (run / "report.md").read_text()
    assert "## Targets at depths 25..500" in report
    # the verdicts read leave-one-source-out at the deployed readout (the run scored it), not the sweep's layer
    assert "leave-one-source-out AUROC at the probe set's readout (layers" in report
    assert "ADA-LP per answer, TPR ≥ 0.90 at ≤ 1% false alarms" in report
    results = json.loads((run / "results.json").read_text())
    t = results["targets"]
    assert sorted(map(int, t["depths"])) == [25, 50, 75, 100]
    row = t["depths"]["25"]
    assert {"loso_probe", "loso_ngram", "test_probe", "test_ngram", "tpr"} <= set(row)
    probes = json.loads((run / results["probes"] / "probeset.json").read_text())
    assert len(probes["combine"]) == 2 and probes["metrics"]["readout"]["stacked"]  # the presets' stacked readout
    # the deployed view: every check of every answer, calibrated on the model's own answers at the spec's length
    assert probes["schedule"]["answer_length"] == 40 and t["answers"]["coverage"] == 1.0
    assert t["fpr_population"] == "benign answers of kind own/prefill"
    assert set(probes["thresholds"]["calibration"]["kinds"]) <= {"own", "prefill"}
    assert "own answers first" in report and "| held-out source | kind |" in report
    assert f"prompts with a false alarm on some answer {rate(t['fpr_prompts'], 3)}" in report
    assert "cannot resolve the target per-answer FPR" in report  # 9 answers at 0.1, and yet what they promise:
    assert "finest FPR this set resolves is 0.11; false alarms to expect on new answers at most 10.0% on average" \
        in report and "calibration prompts)." in report
    assert "By kind: the model's own continuations after a forced opener (on harmful prompts: its deep prefills) " \
        f"{rate(t['tpr_by_kind']['prefill'])}; third-party text" in report
    assert "continuations that recovered into a refusal were dropped" in report
    assert "insertion rows from 7 prompts" in report  # 4 harmful (hosts: refusals) + 3 benign (hosts: all)
    assert next(run.glob("corpus-*/continuations.jsonl")).stat().st_size > 0
    # leave one source out at the stacked readout, beside the sweep's single-layer table
    loso = json.loads((run / results["loso"] / "loso.json").read_text())
    assert loso["readout"]["layers"] == probes["combine"] and loso["readout"]["stacked"]
    assert "## Leave-one-source-out at the deployed readout" in report and loso["loso"]["macro"]["probe"]
    # the per-answer diagnostic script reads the same run (its split, readout and checks)
    import subprocess
    import sys

    got = subprocess.run([sys.executable, "scripts/answer_diagnostic.py", str(out)], capture_output=True, text=True,
                         timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert got.returncode == 0 and "per-answer AUROC" in got.stdout and "TPR with 1 own firing" in got.stdout, got.stderr
    # and `anydepth compare` puts the run in a lever table (the run twice: its shared-source mean is its own)
    assert main(["compare", str(out), str(out), "--tails", "2"]) == 0
    table = capsys.readouterr().out
    assert "| per-answer AUROC, own vs harmful (test) |" in table and "| LOSO mean over the " in table
    assert "| targets: LOSO mean ≥ 0.95; worst source ≥ 0.90;" in table
    assert table.count("harmful test answers scoring lowest:") == 2 and "the threshold sits above these" in table
    assert f"{loso['loso']['macro']['probe']['value']:.3f} [" in table
    # `anydepth judge` reads the run's test answers (the tiny model as a judge: mechanics only, no verdict)
    assert main(["judge", str(out), "--judge-model", str(tiny_dir), "--out", str(tmp_path / "judge")]) == 0
    judged = json.loads((tmp_path / "judge" / "judged.json").read_text())
    n_judged = sum(1 for line in (tmp_path / "judge" / "judgments.jsonl").read_text().splitlines())
    assert judged["judged_harmful"]["n"] > 0 and n_judged >= judged["judged_harmful"]["n"]
    assert "own deep prefills called harmful" in capsys.readouterr().out
    # `anydepth report` rewrites the run from its stage folders (no stage runs): the same report and numbers as the
    # run wrote, also after results.json lost its targets (a run made by a version with other rules)
    before = results
    stale = dict(before, targets={"depths": {}})
    (run / "results.json").write_text(json.dumps(stale))
    (run / "report.md").write_text("stale")
    assert main(["report", str(out)]) == 0
    assert "leave-one-source-out AUROC at the probe set's readout" in capsys.readouterr().out
    assert (run / "report.md").read_text() == report
    assert json.loads((run / "results.json").read_text()) == before


def test_an_edited_spec_is_another_corpus_stage(tmp_path):
    """The corpus stage's key holds the spec's content: editing a spec file (same path, same name) must not reuse
    the corpus built from the old one (it did: the key held only the argv)."""
    from interp.study.config import StudyConfig
    from interp.study.pipeline import continuations_stage
    from interp.study.stages import Runner

    spec = tmp_path / "s.yaml"
    keys = []
    for count in (2, 3):
        spec.write_text(SPEC.replace("count: 6", f"count: {count}"))
        runner = Runner(tmp_path, total=1)
        runner.run = lambda stage, keys=keys: keys.append(stage.key()) or tmp_path
        continuations_stage(runner, StudyConfig(spec=str(spec), model="m").resolved())
    assert len(keys) == 2 and keys[0] != keys[1]


def test_the_hard_negative_weight_reaches_every_probe_stage_and_keys_them(tmp_path, monkeypatch):
    """--hard-negative-weight is what the sweep, the probe set and its readout LOSO fit with, and it keys those
    stages; weight 1 leaves their keys as they were, so earlier runs keep their stages."""
    import interp.probes.run as probes_run
    from interp import UserError
    from interp.study.config import StudyConfig
    from interp.study.pipeline import probe_stages
    from interp.study.stages import Runner

    calls, configs = {}, {}
    for name in ("sweep", "train", "readout_transfer"):
        monkeypatch.setattr(probes_run, name, lambda *a, _n=name, **k: calls.__setitem__(_n, a))
    for weight in (1.0, 3.0):
        runner = Runner(tmp_path, total=1)

        def run(stage, weight=weight):
            configs[weight, stage.name] = stage.config
            if stage.name != "extract":
                stage.run(tmp_path)
            return tmp_path

        runner.run = run
        cfg = StudyConfig(preset="study", model="m", hard_negative_weight=weight).resolved()
        probe_stages(runner, cfg, tmp_path / "c.jsonl")
        fitted = [calls["sweep"][2], calls["train"][2], calls["readout_transfer"][3]]
        assert [p.hard_negative_weight for p in fitted] == [weight] * 3
    for stage in ("sweep", "train", "loso"):
        assert "probe" not in configs[1.0, stage]
        assert configs[3.0, stage]["probe"]["hard_negative_weight"] == 3.0
    assert StudyConfig(preset="study").resolved().hard_negative_weight == 1.0
    with pytest.raises(UserError, match="--hard-negative-weight must be a positive number, got 0"):
        StudyConfig(hard_negative_weight=0).resolved()


def test_presets_fill_only_the_options_left_unset():
    from interp.study.config import StudyConfig

    demo = StudyConfig().resolved()
    assert (demo.spec, demo.eval_limit, demo.over_refusal_limit, demo.batch_size, demo.gen_dtype) == ("demo", 50, 25, 64, "auto")
    assert (demo.calib_fraction, demo.test_fraction, demo.target_fpr) == (0.4, 0.2, 0.01)
    assert (demo.combine_top, demo.stack) == (3, True)
    assert StudyConfig(spec="none").resolved().stack is False  # the built-in set: one layer, nothing to stack
    assert StudyConfig(preset="study").resolved().batch_size == 64
    assert StudyConfig(preset="study").resolved().readout_loso and not demo.readout_loso  # demo: time budget
    given = StudyConfig(batch_size=4, eval_limit=2).resolved()
    assert (given.batch_size, given.eval_limit, given.stride) == (4, 2, 25)


def test_demo_spec_answers_at_its_length_and_reaches_depth_256_from_third_party_text():
    from interp.corpus.spec import load_spec

    spec = load_spec("demo")
    assert spec.max_new_tokens == 128  # the demo's deployed answer length (calibration, over-refusal)
    assert len({e.source for e in spec.entries}) >= 6
    assert {e.source for e in spec.entries if e.kind == "dataset"} >= {"shadow_alignment", "alpaca_eval"}


def test_forward_dtype_auto_is_bf16_only_where_the_cpu_has_it(monkeypatch):
    import interp.generate.continuations as cont
    from interp.study.config import StudyConfig, forward_dtype

    for native, want in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(cont, "cpu_has_native_bf16", lambda native=native: native)
        assert forward_dtype(StudyConfig(device="cpu")) == want
    assert forward_dtype(StudyConfig(device="cpu", dtype="float32")) == "float32"
