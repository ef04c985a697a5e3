"""Build the tutorial notebooks ``notebooks/*.ipynb`` (without outputs) from their jupytext percent sources
``notebooks/*.py``. Edit the ``.py`` files (in any editor, or in Jupyter with jupytext), then run
``python scripts/build_notebooks.py``; cell ids are fixed so an unchanged source gives identical bytes."""

from __future__ import annotations

import sys
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
KERNEL = {"display_name": "Python 3", "language": "python", "name": "python3"}


def build(source: Path, out_dir: Path) -> Path:
    nb = jupytext.read(source, fmt="py:percent")
    nb.metadata = {"kernelspec": KERNEL, "language_info": {"name": "python"}}
    stem = source.stem[:2]
    for i, cell in enumerate(nb.cells, 1):
        cell.metadata = {}
        cell["id"] = f"{stem}-{i:02d}"
    out = out_dir / f"{source.stem}.ipynb"
    nbformat.validate(nb)
    out.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")
    return out


def main(out_dir: Path | None = None) -> int:
    for source in sorted(NOTEBOOKS.glob("*.py")):
        print(f"wrote {build(source, out_dir or NOTEBOOKS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
