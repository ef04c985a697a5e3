"""The tutorial notebooks run top to bottom on the tiny model and are committed without outputs."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NAMES = ["00_whole_study.ipynb", "01_layer_sweep_and_probes.ipynb", "02_guard_deep_prefill.ipynb", "03_causal_analysis.ipynb",
         "04_is_the_safety_token_special.ipynb"]


def test_all_notebooks_present():
    assert [p.name for p in NOTEBOOKS] == NAMES


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_committed_without_outputs(path):
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "a notebook without code cells"
    for cell in code:
        assert cell.outputs == [], f"cell {cell.get('id')} has outputs"
        assert cell.execution_count is None, f"cell {cell.get('id')} has an execution count"
    assert nb.cells[0].cell_type == "markdown", "first cell: what question the notebook answers"
    assert 'os.environ.get("ANYDEPTH_NOTEBOOK_MODEL", "tiny")' in code[0].source, "first code cell picks the model"


def test_notebooks_are_built_from_their_percent_sources(tmp_path):
    """Each notebook is built from its jupytext source (notebooks/NAME.py) by scripts/build_notebooks.py, byte for
    byte (edit the .py source, not the json)."""
    import importlib.util

    assert sorted(p.stem for p in (ROOT / "notebooks").glob("*.py")) == [p.stem for p in NOTEBOOKS]
    spec = importlib.util.spec_from_file_location("build_notebooks", ROOT / "scripts" / "build_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(tmp_path) == 0
    for path in NOTEBOOKS:
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), f"{path.name}: run scripts/build_notebooks.py"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.delenv("ANYDEPTH_NOTEBOOK_MODEL", raising=False)  # CI runs the tiny configuration
    monkeypatch.setenv("MPLBACKEND", "Agg")  # never open a window
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks' temp folders land in pytest's tmp dir
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))  # the CI budget is one core
    nb = nbformat.read(str(path), as_version=4)
    client = NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "every code cell ran"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, "the notebook shows its plots inline"


def _argv(config: dict) -> list[str]:
    """``anydepth demo`` options that reproduce a saved (resolved) study config."""
    import dataclasses

    from interp.study.config import StudyConfig

    argv = []
    for f in dataclasses.fields(StudyConfig):
        value = config.get(f.name)
        if f.metadata.get("cli", True) is False or value is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        argv += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return argv


def test_the_study_notebook_and_the_demo_command_give_identical_results(tmp_path, monkeypatch):
    """Notebook 0 runs the study through the top-level API alone; `anydepth demo` with the same options writes the
    same results.json (everything but the stage timings and the output folder)."""
    import json

    from interp.cli.main import main

    path = ROOT / "notebooks" / "00_whole_study.ipynb"
    monkeypatch.delenv("ANYDEPTH_NOTEBOOK_MODEL", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    nb = nbformat.read(str(path), as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    (notebook_results,) = tmp_path.rglob("results.json")
    run = notebook_results.parent
    config = json.loads((run / "demo_config.json").read_text())
    out = tmp_path / "cli-runs"
    assert main(["demo", *_argv({**config, "out": str(out)})]) == 0
    (cli_results,) = out.rglob("results.json")

    def numbers(p):
        data = json.loads(p.read_text())
        data.pop("timings")
        data["config"].pop("out")
        return data

    mine, theirs = numbers(notebook_results), numbers(cli_results)
    assert mine["targets"]["fpr"] is not None and mine["best_layer"] is not None
    assert mine == theirs
