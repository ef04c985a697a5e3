"""`anydepth demo` end to end on a tiny model: every stage runs, the report has its sections and figures, and a
rerun reuses the finished stages (config-addressed folders)."""

import json

from interp.cli.main import main

ARGS = ["--limit", "40", "--max-new-tokens", "12", "--depths", "0:12:4", "--eval-depths", "0", "4", "12",
        "--eval-limit", "3", "--lookahead", "3", "--batch-size", "6"]


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
    seen = set(probes["split"]["train"]["groups"]) | set(probes["split"]["calibration"]["groups"])
    dp = json.loads((next(run.glob("evaluate-deep-prefill-*")) / "deep_prefill.json").read_text())
    assert dp["split"]["harmful"]["in_sample"] is False and dp["split"]["harmful"]["excluded"] > 0
    from interp.data import load_dataset
    from interp.probes.protocol import group_key

    by_id = {r.id: group_key(r.prompt, r.meta.get("pair_id")) for r in load_dataset("demo")}
    evaluated = {by_id[r["id"]] for r in dp["rows"] + dp["control_rows"]}
    assert evaluated and not evaluated & seen
    for fig in ("layer_depth_auroc.png", "layer_sweep.png", "deep_prefill.png", "over_refusal.png"):
        assert (run / "figures" / fig).stat().st_size > 0
    results = json.loads((run / "results.json").read_text())
    assert (run / results["store"]).exists() and (run / results["probes"] / "probeset.json").exists()
    assert json.loads((run / "demo_config.json").read_text())["eval_limit"] == 3
    capsys.readouterr()
    assert main(["demo", "--model", str(tmp_path / "tiny"), "--out", str(out), *ARGS]) == 0
    rerun = capsys.readouterr().out
    assert rerun.count("finished earlier, reusing") == 8
    # a changed option reruns only the stages it feeds
    assert main(["demo", "--model", str(tmp_path / "tiny"), "--out", str(out), *ARGS, "--skip-eval", "true"]) == 0
    assert "anydepth generate" not in capsys.readouterr().out
