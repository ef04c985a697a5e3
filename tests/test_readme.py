"""The README's code runs: the Python API example (on a tiny model) and the h5py snippet (without the package)."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _block_after(heading: str) -> str:
    text = README.read_text()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _api_code(model_dir: Path) -> str:
    code = _block_after("## Python API").replace('"qwen2.5-coder-0.5b-instruct"', repr(str(model_dir)))
    code = code.replace("max_new_tokens=64", "max_new_tokens=12").replace('"0:64:8"', '"0:12:4"')
    return code.replace("stride=8", "stride=4").replace('"resid_post", 12', '"resid_post", 1')


def test_readme_examples_run_on_a_tiny_model(tmp_path):
    from interp.testing import tiny_model

    model, tok = tiny_model("qwen2", n_layers=2)
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    api = _api_code(tmp_path / "tiny") + "\nprint('API', X.shape, valid.shape)"
    out = subprocess.run([sys.executable, "-c", api], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "API (40, 4, 64) (40, 4)" in out.stdout
    # the h5py snippet in a fresh interpreter that cannot import the package
    snippet = _block_after("Without the package:").replace("layer_12", "layer_1").replace("activations/demo.h5",
                                                                                      "api/s.h5")
    code = "import sys; sys.modules['interp'] = None\n" + snippet + "\nprint('H5', x.shape, y.shape, valid.shape)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, capture_output=True, text=True)
    assert "H5 (40, 4, 64) (40,) (40, 4)" in out.stdout
