"""`anydepth demo` end to end on a tiny model: every stage runs, the report has its sections and figures, and a
rerun reuses the finished stages (config-addressed folders)."""

import json

from interp.cli import main

ARGS = ["--limit", "12", "--max-new-tokens", "12", "--depths", "0:12:4", "--eval-depths", "0", "4", "12",
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
    for section in ("## Probe sweep", "## Deep-prefill attack", "## Over-refusal", "## Cost", "## Stage timings"):
        assert section in report
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
