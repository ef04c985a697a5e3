"""The whole study as numbered library calls (``anydepth demo`` and :func:`interp.run_study` run this):

1. continuations: :func:`interp.corpus.run.build_corpus` (a corpus spec) or :func:`interp.generate.run.make_continuations`
   per dataset (``spec="none"``);
2. :func:`interp.extract.run.extract_activations` the Safety-Token span at every depth and layer;
3. :func:`interp.probes.run.sweep` layers × depths with baselines and leave-one-source-out;
4. :func:`interp.probes.run.train` the held-out probe set and its per-answer threshold;
5. :func:`interp.evaluate.run.evaluate_guard` deep-prefill / over-refusal / cost on the test prompts;
6. the targets and the report (:mod:`interp.study.report`).

Each stage runs in a config-addressed folder under ``<out>/<model>`` (:mod:`interp.study.stages`), so a rerun
reuses finished stages and resumes an interrupted one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from interp.config import save_config, to_dict
from interp.corpus.build import CorpusConfig
from interp.evaluate.common import EvalConfig
from interp.extract.packed import ExtractConfig
from interp.generate.continuations import GenerateConfig
from interp.model.loading import ModelConfig
from interp.naming import run_slug
from interp.probes.oof import ProbeConfig
from interp.probes.run import SweepConfig
from interp.probes.train import TrainConfig
from interp.study.config import CORPUS_EVAL, StudyConfig, answer_length, prepare
from interp.study.result import StudyResult, read_json, run_folder
from interp.study.stages import Runner, Stage

__all__ = ["refresh_study", "run_study", "study_root"]


def study_root(cfg: StudyConfig) -> Path:
    """``<out>/<model>``: where the stage folders, the report and ``results.json`` go."""
    return Path(cfg.out) / run_slug(cfg.model)


def _merge_jsonl(parts: list[Path], out: Path) -> None:
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        for p in parts:
            fh.write(p.read_text())
    os.replace(tmp, out)


def _keyed(**configs) -> dict:
    """The configs a stage's key is made of (their output paths left out: the folder is named by the key)."""
    return {name: {k: v for k, v in to_dict(c).items() if k != "out"} for name, c in configs.items()}


def _changed(*configs) -> str:
    """The options of ``configs`` that differ from their class defaults, for the log (paths as given)."""
    parts = []
    for cfg in configs:
        default = to_dict(type(cfg)())
        parts += [f"{k}={v}" for k, v in to_dict(cfg).items() if k != "out" and v != default.get(k)]
    return ", ".join(parts)


def continuations_stage(runner: Runner, cfg: StudyConfig) -> Path:
    """1. The continuations JSONL: the corpus spec built, or each of ``cfg.data`` generated and merged."""
    from interp.corpus.run import build_corpus
    from interp.corpus.spec import load_spec
    from interp.generate.run import make_continuations

    model = ModelConfig(model=cfg.model, device=cfg.device)
    if cfg.uses_corpus:
        corpus = CorpusConfig(spec=cfg.spec, gen_batch_size=cfg.gen_batch_size, gen_dtype=cfg.gen_dtype)
        folder = runner.run(Stage("corpus", _keyed(model=model, corpus=corpus),
                                  lambda f: build_corpus(model, replace(corpus, out=str(f))),
                                  content=load_spec(cfg.spec).sha256(),  # an edited spec is another corpus
                                  note=_changed(model, corpus)))
        return folder / "continuations.jsonl"
    folders = []
    for name in cfg.data:
        gen = GenerateConfig(data=name, limit=cfg.limit or None, mode="matched", max_new_tokens=cfg.max_new_tokens,
                             gen_batch_size=cfg.gen_batch_size)
        folders.append(runner.run(Stage(f"generate-{run_slug(name)}", _keyed(model=model, generate=gen),
                                        lambda f, gen=gen: make_continuations(model, gen, out=f / "continuations.jsonl"),
                                        note=_changed(model, gen))))
    parts = [g / "continuations.jsonl" for g in folders]
    merged = runner.run(Stage("continuations", {"merge": [p.name for p in parts]},
                              lambda f: _merge_jsonl(parts, f / "continuations.jsonl"), [g.name for g in folders]))
    return merged / "continuations.jsonl"


def probe_stages(runner: Runner, cfg: StudyConfig, continuations: Path) -> tuple[Path, Path, Path, Path | None]:
    """2–4. Extract, sweep and train (and leave one source out at the readout): the store, the sweep folder, the
    probe-set folder and the readout-LOSO folder (None when off)."""
    from interp.extract.run import extract_activations
    from interp.probes.run import readout_transfer, sweep, train

    model = ModelConfig(model=cfg.model, device=cfg.device, dtype=cfg.dtype)
    ext = ExtractConfig(continuations=str(continuations), depths=cfg.depths, answer_length=answer_length(cfg),
                        layers="all", hooks=("resid_post",), positions="probe")
    ext_dir = runner.run(Stage("extract", _keyed(model=model, extract=ext),
                               lambda f: extract_activations(model, replace(ext, out=str(f / "store.h5"))),
                               [continuations.parent.name], note=_changed(model, ext)))
    store = str(ext_dir / "store.h5")
    probe = ProbeConfig(hard_negative_weight=cfg.hard_negative_weight)
    keyed_probe = {"probe": probe} if probe != ProbeConfig() else {}  # the plain fit keeps earlier runs' keys
    swp = SweepConfig(store=store, stride=cfg.stride, target_fpr=cfg.target_fpr)
    sweep_dir = runner.run(Stage("sweep", _keyed(sweep=swp, **keyed_probe), lambda f: sweep(store, swp, probe, out=f),
                                 [ext_dir.name], note=_changed(swp, probe)))
    trn = TrainConfig(store=store, stride=cfg.stride, target_fpr=cfg.target_fpr, combine_top=cfg.combine_top,
                      stack=bool(cfg.stack and cfg.combine_top), calib_fraction=cfg.calib_fraction, test_fraction=cfg.test_fraction)
    probes_dir = runner.run(Stage("train", _keyed(train=trn, **keyed_probe), lambda f: train(store, trn, probe, out=f),
                                  [ext_dir.name], note=_changed(trn, probe)))
    loso_dir = runner.run(Stage("loso", _keyed(train=trn, **keyed_probe),
                                lambda f: readout_transfer(store, probes_dir, trn, probe, out=f),
                                [probes_dir.name], note="leave one source out at the probe set's readout")
                          ) if cfg.readout_loso else None
    return ext_dir / "store.h5", sweep_dir, probes_dir, loso_dir


def eval_config(cfg: StudyConfig, mode: str, probes_dir: Path) -> EvalConfig:
    """The options of evaluation ``mode`` in the study: held-out prompts of the evaluation sets, the study's
    forward dtype, its guard stride (the answers the threshold was calibrated for)."""
    data = CORPUS_EVAL.get(mode, cfg.data) if cfg.uses_corpus else cfg.data
    common = dict(model=cfg.model, device=cfg.device, dtype=cfg.dtype, probes=str(probes_dir), datasets=tuple(data),
                  limit=cfg.over_refusal_limit if mode == "over-refusal" else cfg.eval_limit,
                  lookahead=cfg.lookahead, base_lookahead=cfg.lookahead, batch_size=cfg.batch_size)
    extra = {"deep-prefill": dict(depths=tuple(cfg.eval_depths),
                                  continuation="dataset" if cfg.uses_corpus else "prefill"),
             "over-refusal": dict(stride=cfg.stride),
             "cost": dict(contexts=(128, 512), strides=(25,), max_new_tokens=50)}[mode]
    return EvalConfig(**common, **extra)


def _evaluations(runner: Runner, cfg: StudyConfig, probes_dir: Path) -> dict[str, Path]:
    """5. Each evaluation on the held-out prompts."""
    from interp.evaluate.run import evaluate_guard

    out = {}
    for mode in () if cfg.skip_eval else cfg.evaluations:
        ecfg = eval_config(cfg, mode, probes_dir)
        out[mode] = runner.run(Stage(f"evaluate-{mode}", _keyed(evaluate=ecfg),
                                     lambda f, m=mode, e=ecfg: evaluate_guard(m, replace(e, out=str(f))),
                                     [probes_dir.name], note=_changed(ecfg)))
    return out


def run_study(cfg: StudyConfig | None = None, *, log: Callable[[str], None] = print) -> StudyResult:
    """Run every stage of ``cfg`` (resolved from its preset by :func:`prepare`), write ``report.md`` and
    ``results.json`` under :func:`study_root`, and return the result (targets and verdicts included)."""
    from interp.study.report import write_report

    cfg = prepare(cfg or StudyConfig(), log=log)
    root = study_root(cfg)
    save_config(cfg, root / "demo_config.json")
    evaluations = () if cfg.skip_eval else cfg.evaluations
    n_gen = 1 if cfg.uses_corpus else len(cfg.data) + 1
    runner = Runner(root, total=n_gen + 3 + bool(cfg.readout_loso) + len(evaluations), log=log)
    continuations = continuations_stage(runner, cfg)
    store, sweep_dir, probes_dir, loso_dir = probe_stages(runner, cfg, continuations)
    eval_dirs = _evaluations(runner, cfg, probes_dir)
    result = StudyResult.collect(root, cfg, store=store, sweep_dir=sweep_dir, probes_dir=probes_dir,
                                 eval_dirs=eval_dirs, timings=runner.timings, loso_dir=loso_dir)
    write_report(root, result, corpus_dir=continuations.parent if cfg.uses_corpus else None)
    result.save(root / "results.json")
    return result


def _corpus_folder(root: Path, result: StudyResult) -> Path | None:
    """The run's corpus folder: the one its store was extracted from (None for ``--spec none`` runs)."""
    stage = read_json(result.path(result.store).parent / "stage.json") or {}
    cont = ((stage.get("config") or {}).get("extract") or {}).get("continuations")
    folder = root / Path(cont).parent.name if cont else None
    return folder if folder and (folder / "continuations.config.json").exists() else None


def refresh_study(run: str | Path) -> StudyResult:
    """Recompute a finished run's targets by this version's rules and rewrite its ``report.md`` and
    ``results.json`` from its stage folders; no stage runs (``anydepth report``, after an upgrade)."""
    from interp.study.report import write_report

    root = run_folder(run)
    result = StudyResult.load(root).refreshed()
    write_report(root, result, corpus_dir=_corpus_folder(root, result))
    result.save(root / "results.json")
    return result
