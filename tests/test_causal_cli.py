"""End-to-end CLI runs of `anydepth patch / ablate / transcoders` on a saved tiny model (seconds)."""

from __future__ import annotations

import json

import pytest

from interp.cli.main import main


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from interp.causal.synthetic import toy_examples
    from interp.generate.continuations import Continuation, save_jsonl
    from interp.testing import tiny_model

    root = tmp_path_factory.mktemp("causal_cli")
    model, tok = tiny_model("qwen2", n_layers=2)
    model.save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    items = [Continuation(id=e.id, prompt="p", label=e.label, prompt_ids=list(e.prompt_ids),
                          response_ids=list(e.response_ids)) for e in toy_examples(tok, n_per_label=6)]
    save_jsonl(items, root / "cont.jsonl")
    return root


def _common(root):
    return ["--model", str(root / "tiny"), "--continuations", str(root / "cont.jsonl"), "--out", str(root / "out")]


def test_patch_cli(workdir):
    assert main(["patch", *_common(workdir), "--depths", "0", "4", "--where", "probe"]) == 0
    out = workdir / "out" / "patch"
    res = json.loads((out / "patch.json").read_text())
    assert len(res["patching"]["cells"]) == 2 * 2 * 2  # depths x layers x directions
    assert {r["depth"] for r in res["knockout"]} == {0, 4}
    assert (out / "patch_heatmap.png").stat().st_size > 0 and (out / "knockout.png").is_file()


def test_ablate_and_transcoders_cli(workdir, capsys):
    assert main(["ablate", *_common(workdir), "--depths", "4", "--n-random", "2", "--layers", "1"]) == 0
    res = json.loads((workdir / "out" / "ablate" / "directions_ablate.json").read_text())
    assert {r["direction"] for r in res["directions"]["rows"]} == {"diff_of_means"}
    assert all(len(r["random_means"]) == 2 for r in res["directions"]["rows"])
    assert (res["directions"]["n_select"], res["directions"]["n_measure"]) == (6, 6)  # half the prompts each
    root = workdir / "tc"
    assert main(["transcoders", "train", "--model", str(workdir / "tiny"), "--continuations",
                 str(workdir / "cont.jsonl"), "--layers", "1", "--steps", "30", "--root", str(root)]) == 0
    folders = [p.parent for p in root.rglob("cfg.json")]
    assert len(folders) == 1 and folders[0].name == "layer_1"
    assert main(["transcoders", "list", "--root", str(root)]) == 0
    assert "blocks.1.mlp.hook_in" in capsys.readouterr().out
    assert main(["ablate", *_common(workdir), "--kind", "features", "--transcoder", str(folders[0]),
                 "--depths", "4", "--n-random", "2", "--ks", "0", "1"]) == 0
    res = json.loads((workdir / "out" / "ablate" / "features_zero.json").read_text())
    assert res["features"]["layer"] == 1 and res["features"]["ranked"]
    assert (res["features"]["n_select"], res["features"]["n_measure"]) == (6, 6)
    assert all(r["d_refusal"]["mean"] == 0.0 for r in res["features"]["ablation"]["rows"] if r["k"] == 0)
    assert main(["ablate", *_common(workdir), "--kind", "features"]) == 2  # UserError: no --transcoder


def test_selection_and_measurement_split_by_prompt():
    """Features and directions are chosen on one half of each label's prompts and measured on the other: every
    row of a prompt lands on one side (a harmful prompt under two openers cannot straddle the split)."""
    from interp import UserError
    from interp.causal.inputs import Example, split_by_prompt

    rows = [Example(f"{lab}{p}-{o}", lab, (p, 1 if lab == "harmful" else 2), (o,), "s")
            for lab in ("harmful", "benign") for p in range(10) for o in range(2)]
    select, measure = split_by_prompt(rows, 0.5, seed=1)
    assert len(select) == len(measure) == 20
    assert not {e.prompt_ids for e in select} & {e.prompt_ids for e in measure}
    assert sum(e.label == "harmful" for e in select) == 10
    assert split_by_prompt(rows, 0.5, seed=1) == (select, measure) and split_by_prompt(rows, 0.5, seed=2) != (
        select, measure)
    assert split_by_prompt(rows, 0.0) == (rows, rows)
    with pytest.raises(UserError, match="leaves fewer than 2 benign prompts"):
        split_by_prompt(rows[:20] + rows[20:26], 0.5)
    with pytest.raises(UserError, match=r"select-fraction must lie in \[0, 1\)"):
        split_by_prompt(rows, 1.0)
