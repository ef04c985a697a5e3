"""scripts/bench_scale.py runs end to end on a tiny shape and keeps its last line."""

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_scale.py"


def test_bench_scale_last_line(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--responses", "60", "120", "--depths", "4", "--layers", "2",
                          "--d-model", "16", "--tmp", str(tmp_path), "--train", "--train-stack", "2"],
                         check=True, capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    assert re.fullmatch(r"rows_per_s=\d+(\.\d+)? peak_gib=\d+\.\d+", lines[-1])
    assert sum("layers 2:" in line for line in lines) == 3 and sum("layers 1:" in line for line in lines) == 1
    assert sum(line.startswith("train on responses") for line in lines) == 2
    assert any("stacked readout of 2 layers" in line for line in lines)
    assert not list(tmp_path.iterdir())  # the synthetic stores are removed
