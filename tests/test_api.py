"""The Python API's shape: the lazy top-level names, typed results that round-trip through JSON, a library that
never imports the CLI, a thin CLI and short functions (no downloads)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import interp

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "interp"


def test_every_top_level_name_resolves_and_nothing_heavy_loads_on_import():
    for name in interp.__all__:
        assert getattr(interp, name) is not None, name
    code = "import sys, interp; print('torch' in sys.modules, len(interp.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "False" and int(out[1]) == len(interp.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        interp.nope  # noqa: B018


def test_stage_functions_are_not_shadowed_by_their_subpackages():
    """A top-level function named like a subpackage (``interp.extract``) would be replaced by the subpackage on its
    first import: the stage functions have names of their own."""
    import interp.evaluate.run  # noqa: F401  (imports the subpackages)
    import interp.extract.run  # noqa: F401
    import interp.generate.run  # noqa: F401

    subpackages = {p.name for p in PKG.iterdir() if (p / "__init__.py").exists()}
    assert not subpackages & set(interp.__all__)
    assert callable(interp.extract_activations) and callable(interp.make_continuations)


def _library_modules():
    return [p for p in PKG.rglob("*.py") if "cli" not in p.relative_to(PKG).parts]


def _imports_cli(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        if any(n == "interp.cli" or n.startswith("interp.cli.") for n in names):
            return True
    return False


def test_no_library_module_or_notebook_imports_the_cli():
    bad = [str(p.relative_to(ROOT)) for p in [*_library_modules(), *(ROOT / "notebooks").glob("*.py")]
           if _imports_cli(p)]
    assert not bad, bad


def test_cli_modules_only_parse_call_and_print():
    long = {p.name: n for p in (PKG / "cli" / "commands").glob("*.py")
            if (n := len(p.read_text().splitlines())) > 60}
    assert not long, long


def test_no_function_in_the_package_is_longer_than_80_lines():
    long = []
    for p in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not long, long


def test_results_round_trip_through_json(tmp_path):
    import json

    import numpy as np

    from interp.evaluate.run import EvaluationResult
    from interp.probes.sweep import SweepResult
    from interp.study.result import StudyResult

    sweep = SweepResult(layers=[0, 1], depths=[0, 4], methods=["probe"], best_layer=1,
                        per_layer={"probe": [{"auroc": {"value": 0.6, "lo": 0.5, "hi": 0.7}},
                                             {"auroc": {"value": float("nan"), "lo": 0.5, "hi": 0.9}}]},
                        per_depth={"probe": [[None, None], [None, None]]}, best={}, position=3,
                        oof={"probe": np.zeros((2, 3, 2))})
    data = sweep.to_json()
    assert data["result"] == "sweep" and "oof" not in data  # arrays go to oof_scores.npz, not the JSON
    assert data["per_layer"]["probe"][1]["auroc"]["value"] is None  # JSON has no NaN
    back = SweepResult.from_json(json.loads(json.dumps(data)))
    assert back.to_json() == data and back.auroc("probe", 0)["value"] == 0.6
    ev = EvaluationResult("over-refusal", tmp_path / "x.json", {"rates": {"all": {"lp": {"rate": 0.1}}}})
    assert EvaluationResult.load(ev.save(tmp_path / "ev.json")) == ev
    assert ev.headline() == {"all": {"lp": 0.1}}
    study = StudyResult(config={"out": "x"}, timings={"a": {"seconds": 1.0, "reused": False}}, best_layer=1,
                        store="s", probes="p", sweep="w", targets={"depths": {25: {}}})
    study.save(tmp_path / "results.json")
    loaded = StudyResult.load(tmp_path)
    assert loaded.root == tmp_path and loaded.numbers() == study.numbers() and "timings" not in study.numbers()


def _ci(v):
    return {"value": v, "lo": v - 0.01, "hi": v + 0.01}


def _loso(macro_25, macro_50, worst_50, diffs):
    """A leave-one-source-out block as the sweep and the readout stage write it."""
    return {"per_depth": {"probe": [{"depth": 25, "macro": _ci(macro_25), "worst": {"source": "a", "value": 0.95},
                                     "n_sources": 3, "n_rows": 10},
                                    {"depth": 50, "macro": _ci(macro_50), "worst": {"source": "b", "value": worst_50},
                                     "n_sources": 3, "n_rows": 10},
                                    {"depth": 0, "macro": _ci(0.5), "worst": {"source": "a", "value": 0.1},
                                     "n_sources": 3, "n_rows": 10}],
                          "ngram": [{"depth": 25, "macro": _ci(0.9), "worst": None, "n_sources": 3}]},
            "rows": [{"source": s, "probe_minus_ngram": {"value": d, "lo": d - 0.02, "hi": d + 0.02}}
                     for s, d in diffs.items()]}


def test_targets_verdicts_are_computed_in_the_library():
    """Each target's verdict at its lowest depth in 25..500, the readout's LOSO preferred to the sweep's, and the
    words saying by how much a target is missed."""
    from interp.study.targets import CHECK_TPR_TARGET, LOSO_MACRO_TARGET, LOSO_WORST_TARGET, targets
    from interp.study.verdicts import verdict_lines

    sweep = {"best_layer": 7, "loso": _loso(0.995, 0.98, 0.85, {"a": 0.05, "b": -0.05, "c": 0.0})}
    probes = {"metrics": {"test": {"per_depth": {"probe": [
        {"depth": 25, "auroc": 0.99, "tpr_at_threshold": {"rate": 0.76}},
        {"depth": 50, "auroc": 0.99, "tpr_at_threshold": {"rate": 0.97}}]},
        "per_answer": {"fpr": {"rate": 0.02, "n": 50}, "tpr": {"rate": 0.93}}}}}
    t = targets(sweep, probes, 0.01)
    s = t["summary"]
    assert s["loso_macro_min"] == {"value": 0.98, "depth": 50, "met": True, "target": LOSO_MACRO_TARGET}
    assert s["loso_worst_min"] == {"value": 0.85, "depth": 50, "met": False, "target": LOSO_WORST_TARGET,
                                   "source": "b"}
    assert s["probe_vs_ngram"] == {"above": ["a"], "below": ["b"], "of": 3, "met": False}
    assert s["tpr_min"] == {"value": 0.76, "depth": 25, "met": False, "target": CHECK_TPR_TARGET}
    assert s["per_answer"]["met"] is False and s["per_answer"]["resolvable"] is False
    assert s["fpr"] == {"value": 0.02, "met": False, "target": 0.01}
    assert s["loso_above_ngram"] == {"depths": 1, "of": 2}
    assert t["loso_readout"] == "the sweep's best layer (7)"
    lines = "\n".join(verdict_lines(t))
    for words in ("mean over held-out sources ≥ 0.95 at every depth: met (lowest 0.980 at depth 50)",
                  "missed by 0.050 (lowest 0.850, b at depth 50)", "missed (below it on b; above on 1 of 3 sources, "
                  "no call on 1)", "missed by 0.04 (lowest 0.76 at depth 25)",
                  "false alarms 0.020 on 50 own answers; false alarms above by 0.010; 50 own answers cannot resolve "
                  "1%", "(the run's calibration target): missed by 0.010 (0.020)"):
        assert words in lines, words

    readout = {"readout": {"layers": [3, 5], "stacked": True}, "loso": _loso(0.96, 0.955, 0.91, {"a": 0.05})}
    probes["metrics"]["test"]["per_answer"] = {"fpr": {"rate": 0.0, "n": 120}, "tpr": {"rate": 0.9}}
    t = targets(sweep, probes, 0.01, readout)
    s = t["summary"]
    assert t["loso_readout"] == "the probe set's readout (layers 3, 5, stacked)"
    assert s["loso_macro_min"]["value"] == 0.955 and s["loso_worst_min"]["met"] is True
    assert s["probe_vs_ngram"]["met"] is True and s["per_answer"]["met"] is True
    assert s["per_answer"]["resolvable"] is True
