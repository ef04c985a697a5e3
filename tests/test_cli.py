"""The CLI: every subcommand is discovered, documents itself and refuses bad input in one line."""

import dataclasses
import re

import pytest

from interp.cli.main import main
from interp.cli.registry import build_parser
from interp.config import add_arguments, config_hash, from_namespace, load_config, save_config

EXPECTED = {"generate", "extract", "train", "sweep", "guard", "evaluate", "patch", "ablate", "transcoders", "demo",
            "serve", "models", "datasets", "corpus"}


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


def test_every_issue_subcommand_is_registered():
    assert EXPECTED <= set(_subcommands())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_help_renders(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert "usage: anydepth" in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


@dataclasses.dataclass
class _Cfg:
    name: str = dataclasses.field(default="x", metadata={"help": "a name with 100% coverage"})
    depth: int = 3
    flags: tuple[int, ...] = (1, 2)
    on: bool = False
    maybe: float | None = None


def test_dataclass_round_trip_through_argparse_and_json(tmp_path):
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p, _Cfg)
    p.format_help()  # '%' in help text must not break argparse
    cfg = from_namespace(_Cfg, p.parse_args(["--depth", "7", "--flags", "4", "5", "--on", "true"]))
    assert cfg == _Cfg(depth=7, flags=(4, 5), on=True)
    assert from_namespace(_Cfg, p.parse_args([])) == _Cfg()
    path = save_config(cfg, tmp_path / "c.json")
    assert load_config(_Cfg, path) == cfg
    assert config_hash(cfg) != config_hash(_Cfg())


def test_user_error_is_one_line(capsys):
    code = main(["datasets", "verify", "no_such_dataset"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no_such_dataset" in err[0]


@pytest.mark.parametrize("argv, message", [
    (["generate", "--model", "tiny", "--gen-batch-size", "0"], "--gen-batch-size must be >= 1"),
    (["generate", "--model", "tiny", "--sample", "true", "--temperature", "0"], "--temperature must be > 0"),
    (["generate", "--model", "tiny", "--top-p", "2"], "--top-p must be in (0, 1]"),
    (["generate", "--model", "tiny", "--limit", "0"], "--limit must be >= 1"),
    (["evaluate", "over-refusal", "--model", "tiny", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["evaluate", "over-refusal", "--model", "tiny", "--limit", "0"], "--limit must be >= 1"),
    (["evaluate", "over-refusal", "--model", "tiny", "--threshold", "2"], "--threshold is a probability"),
    (["evaluate", "deep-prefill", "--model", "tiny", "--k-of-n", "0"], "--k-of-n must be >= 1"),
    (["guard", "--model", "tiny", "--mode", "rk", "--prompt", "hi", "--top-p", "2"], "--top-p must be in (0, 1]"),
    (["guard", "--model", "tiny", "--mode", "rk", "--prompt", "hi", "--do-sample", "true", "--temperature", "0"],
     "--temperature must be > 0"),
    (["guard", "--model", "tiny", "--mode", "lp", "--prompt", "hi", "--threshold", "2"], "--threshold is a probability"),
    (["guard", "--model", "tiny", "--mode", "lp", "--prompt", "hi", "--threshold", "nan"],
     "--threshold is a probability"),
    (["serve", "--model", "tiny", "--mode", "lp", "--threshold", "1.5"], "--threshold is a probability"),
    (["serve", "--model", "tiny", "--mode", "rk", "--port", "70000"], "--port must be in 0..65535"),
    (["serve", "--model", "tiny", "--mode", "rk", "--queue-size", "0"], "--queue-size must be >= 1"),
])
def test_numeric_options_get_one_line_errors(argv, message, capsys):
    from interp.cli.main import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("value, message", [(float("nan"), "is a probability"), (2.0, "is a probability"),
                                            ("abc", "must be a number in [0, 1]"), (None, "must be a number")])
def test_a_probe_set_whose_threshold_can_never_fire_is_refused(tmp_path, value, message):
    """NaN, a value above 1 or a non-number in probeset.json would turn the guard off silently (issue 33 item 3)."""
    import json

    import torch

    from interp import UserError
    from interp.probes import ProbeSet

    probes = ProbeSet(layers=[0, 1], weights=torch.zeros(2, 4), bias=torch.zeros(2), hook="hook_resid_post",
                      position="probe", best_layer=1, threshold=0.5)
    probes.save(tmp_path / "p")
    assert ProbeSet.load(tmp_path / "p").threshold == 0.5
    meta = json.loads((tmp_path / "p" / "probeset.json").read_text())
    meta["threshold"] = value
    (tmp_path / "p" / "probeset.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"probeset.json: threshold " + re.escape(message)):
        ProbeSet.load(tmp_path / "p")


def test_out_of_the_wrong_kind_is_refused_before_any_work(tmp_path, capsys):
    """An existing folder where a file goes, a file where a folder goes: a one-line error before the model loads
    or the store opens, and nothing written (issue 33 item 5)."""
    folder, file = tmp_path / "folder", tmp_path / "file.txt"
    folder.mkdir()
    file.write_text("keep me")
    cases = [
        (["generate", "--model", "tiny", "--data", "demo", "--limit", "1", "--out", str(folder)], "is a folder"),
        (["corpus", "--model", "tiny", "--spec", "demo", "--out", str(file)], "is a file; give a folder"),
        (["train", "--store", str(tmp_path / "missing.h5"), "--out", str(file)], "is a file; give a folder"),
        (["generate", "--model", "tiny", "--data", "demo", "--limit", "1", "--out", str(file / "out.jsonl")],
         "file.txt is a file, not a folder"),
        # the rest of the commands that write (they gave a traceback after all the work, or wrote first)
        (["sweep", "--store", str(tmp_path / "missing.h5"), "--out", str(file)], "is a file; give a folder"),
        (["sweep", "--store", str(tmp_path / "missing.h5"), "--out", str(file / "x")], "is a file, not a folder"),
        (["extract", "--model", "tiny", "--continuations", str(tmp_path / "c.jsonl"), "--out", str(folder)],
         "is a folder"),
        (["extract", "--model", "tiny", "--continuations", str(tmp_path / "c.jsonl"), "--out", str(file / "s.h5")],
         "is a file, not a folder"),
        (["evaluate", "over-refusal", "--model", "tiny", "--out", str(file)], "is a file; give a folder"),
        (["patch", "--model", "tiny", "--out", str(file)], "is a file, not a folder"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "folder"] and not any(folder.iterdir())
    assert file.read_text() == "keep me"


def test_the_help_read_without_importing_is_the_help_each_command_registers():
    from interp.cli.registry import command_help, command_names

    action = next(a for a in build_parser()._actions if a.dest == "command")
    registered = {a.dest: a.help for a in action._choices_actions}
    assert set(registered) == set(command_names())
    for name in command_names():
        assert command_help(name) == registered[name], name


def test_top_level_help_and_a_light_command_do_not_import_torch():
    """Only the command that runs is imported: ``anydepth --help`` lists every command without torch."""
    import subprocess
    import sys

    code = ("import sys; from interp.cli.registry import build_parser, command_names\n"
            "for argv in ([], ['datasets', 'list']):\n"
            "    text = build_parser(argv).format_help()\n"
            "    assert all(n in text for n in command_names()), text\n"
            "print('torch' in sys.modules, 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr


def test_the_chosen_command_is_the_first_word_that_is_not_an_option():
    from interp.cli.registry import chosen_command

    assert chosen_command(["levers", "--store", "x"]) == "levers"
    assert chosen_command(["--version"]) is None and chosen_command([]) is None and chosen_command(["nope"]) is None
    args = build_parser(["train", "--store", "s.h5"]).parse_args(["train", "--store", "s.h5"])
    assert args.command == "train" and args.store == "s.h5" and callable(args.func)
