"""`anydepth positions`: the header against every other read position, on synthetic stores with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from interp import UserError
from interp.probes.contrasts import prompt_controlled
from interp.probes.position_names import position_names
from interp.probes.positions import PositionsConfig, compare_positions
from interp.probes.run import positions
from interp.probes.synthetic import STUDY, write_positions_store

FAST = dict(n_boot=200, loso=False)


def _run(tmp_path, planted, **kw):
    path = write_positions_store(tmp_path / f"{planted}.h5", planted)
    return positions(path, PositionsConfig(**{**FAST, **kw}), progress=False)


def test_a_signal_planted_at_a_neutral_span_makes_the_header_lose(tmp_path):
    res = _run(tmp_path, "random")
    assert res.row("random").auroc["value"] > 0.9
    assert res.row("header").auroc["value"] < 0.7
    assert res.row("random").vs_header["loses"]
    assert "random (-" in res.verdicts[1].split("loses to")[1]
    assert "random (layer 0)" in res.verdicts[0].split("loses to")[1] and res.verdicts[0].startswith("synthetic, layers 0:")


def test_a_signal_planted_at_the_header_makes_it_beat_the_controls(tmp_path):
    res = _run(tmp_path, "header")
    line = res.verdicts[1]
    assert "loses to none" in line
    for control in ("user_header", "newlines", "random", "last_token", "response_mean"):
        assert res.row(control).vs_header["beats"], control
        assert f"{control} (+" in line.split("beats")[1].split(";")[0]
        assert control in res.verdicts[0].split("at every layer")[0]
    # the header reads the continuation: within harmful prompts it tells compliance from refusal
    assert res.row("header").contrasts["harmful"]["value"] > 0.9


def test_a_prompt_only_feature_scores_one_half_within_prompts(tmp_path):
    res = _run(tmp_path, "header")
    for name in ("t_inst", "prompt"):
        row = res.row(name)
        assert row.auroc["value"] > 0.6  # it does tell harmful prompts from benign ones ...
        for contrast in ("harmful", "benign"):  # ... but not one answer from the other to the same prompt
            c = row.contrasts[contrast]
            assert c["value"] == pytest.approx(0.5, abs=1e-12) and c["lo"] <= 0.5 <= c["hi"], (name, contrast)
            assert c["n_prompts"] == 80


def test_within_prompt_auroc_compares_only_pairs_of_one_prompt_and_depth():
    y = np.array([1, 0, 1, 0])
    groups = np.array(["a", "a", "b", "b"])
    kinds = np.array(["prefill", "refusal", "prefill", "refusal"])
    # prompt a scores high for both of its answers, prompt b low: pooled over prompts the ranking would mix them
    p = np.array([[0.9], [0.8], [0.2], [0.1]])
    got = prompt_controlled(p, y, groups, kinds, None)
    assert got["harmful"]["value"] == 1.0 and got["harmful"]["n_blocks"] == 2
    # depth 0 is left out: there both answers are the same input
    assert "no prompt holds both" in prompt_controlled(p, y, groups, kinds, None, np.array([0]))["harmful"]["note"]
    assert "no prompt holds both" in got["benign"]["note"]
    from interp.probes.positions import PositionRow, verdict_lines

    row = PositionRow(layer=3, position="header", auroc=None, per_depth=[], vs_header=None, vs_header_per_depth=[],
                      loso=None, contrasts=got)
    lines = verdict_lines([row], 3)
    assert "within harmful prompts (2 prompts): header AUROC 1.000" in lines[1]
    assert "within benign prompts: not measured (no prompt holds both arms" in lines[2]


def test_positions_saves_its_table_figure_and_loso(tmp_path):
    path = write_positions_store(tmp_path / "s.h5", "header")
    res = positions(path, PositionsConfig(n_boot=50, out=str(tmp_path / "out")), progress=False)
    for name in ("positions.json", "positions.md", "positions.png", "config.json"):
        assert (tmp_path / "out" / name).exists(), name
    assert res.row("header").loso["macro"]["value"] > 0.9
    assert res.row("header[0]").loso is None  # header tokens get no leave-one-source-out
    assert "| 0 | header (probe token) |" in (tmp_path / "out" / "positions.md").read_text()
    assert type(res).load(tmp_path / "out" / "positions.json").verdicts == res.verdicts


def test_position_names_and_bad_input(tmp_path):
    path = write_positions_store(tmp_path / "s.h5", "header", n_prompts=10)
    from interp.extract.store import ActivationStore

    with ActivationStore.open(path) as store:
        assert position_names(store) == ["header", "header[0]", "header[1]", "header_mean", "last_token", "prompt",
                                         *STUDY]
        with pytest.raises(UserError, match="position 'assistant' is not in this store"):
            compare_positions(store, PositionsConfig(positions=["assistant"]), progress=False)
        with pytest.raises(UserError, match="holds layers"):
            compare_positions(store, PositionsConfig(layers="5"), progress=False)
        with pytest.raises(UserError, match="hook"):
            compare_positions(store, PositionsConfig(hook="ln1"), progress=False)
