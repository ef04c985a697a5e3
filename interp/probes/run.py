"""The probe stages: :func:`sweep` (grouped-CV probes over layers × depths with baselines) and :func:`train` (the
held-out probe set the guard loads), each on a store, typed in and out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from interp import UserError
from interp.config import save_config, to_dict
from interp.extract.store import ActivationStore, canonical_hook
from interp.naming import check_out
from interp.probes.data import (
    LayerData,
    StoreSliceConfig,
    examples_meta,
    load_layer,
    require_finished,
)
from interp.probes.oof import ProbeConfig
from interp.probes.probeset import ProbeSet, jsonable
from interp.probes.protocol import ScheduleConfig, check_schedule
from interp.probes.stores import (
    check_depths,
    position_arg,
    store_answers,
    store_texts,
    using_store,
    with_added,
)
from interp.probes.sweep import SweepPlan, SweepResult, run_sweep
from interp.probes.train import TrainConfig, save_probeset, train_probeset

__all__ = ["SweepConfig", "levers", "readout_transfer", "sweep", "train"]


@dataclass
class SweepConfig(StoreSliceConfig, ScheduleConfig):
    """Which store and which slice of it to sweep, and how (``anydepth sweep``)."""

    out: str = field(default="", metadata={"help": "output directory (JSON, plots, config)"})
    n_boot: int = field(default=1000, metadata={"help": "bootstrap resamples (by prompt) for 95% CIs"})
    per_depth_fit: bool = field(default=False, metadata={"help": "train one probe per depth instead of pooling"})
    baselines: list[str] = field(default_factory=lambda: ["last_token", "prompt", "diffmeans", "shuffled", "ngram"],
                                 metadata={"help": "baselines on identical splits"})
    train_sources: list[str] | None = field(default=None, metadata={"help": "train on these sources only ..."})
    test_sources: list[str] | None = field(default=None, metadata={"help": "... and test on these"})

    def plan(self, store, layers: list[int]) -> SweepPlan:
        """The sweep's settings for ``store`` (its answer length sets the guard schedule)."""
        return SweepPlan(layers=layers, folds=self.folds, seed=self.seed, n_boot=self.n_boot,
                         per_depth_fit=self.per_depth_fit, baselines=tuple(self.baselines), target_fpr=self.target_fpr,
                         control_sources=self.control_sources, train_sources=self.train_sources,
                         test_sources=self.test_sources, schedule=self.schedule(getattr(store, "answer_length", None)),
                         calibrate_on=tuple(self.calibrate_on))


def sweep(store: str | Path | ActivationStore | None = None, cfg: SweepConfig | None = None,
          probe: ProbeConfig | None = None, *, out: str | Path | None = None) -> SweepResult:
    """Cross-validate probes (and the baselines on the same folds) over ``cfg``'s layers and depths of ``store``
    (default ``cfg.store``); saved into ``out`` (default ``cfg.out``) when one is given."""
    cfg, probe = cfg or SweepConfig(), probe or ProbeConfig()
    out = out if out is not None else (cfg.out or None)
    if out:
        check_out(out, "dir")  # before the store is read
    with using_store(store if store is not None else cfg.store) as opened:
        result = _sweep_open(opened, cfg, probe)
    result.store = str(store if isinstance(store, (str, Path)) else cfg.store or opened.path)
    if out:
        result.save(out)
        save_config(cfg, Path(out) / "config.json")
        save_config(probe, Path(out) / "probe_config.json")
    return result


def _sweep_open(store: ActivationStore, cfg: SweepConfig, probe: ProbeConfig) -> SweepResult:
    require_finished(store, cfg.allow_partial)
    hook = canonical_hook(cfg.hook) if cfg.hook else store.hooks[0]
    cfg.validate()
    layers = cfg.resolve_layers(store)
    check_schedule(cfg)
    plan = cfg.plan(store, layers)
    check_depths(store, cfg.depths)
    meta = examples_meta(store)
    answers = store_answers(store, meta) if not cfg.depths else None  # every check the guard makes: whole grid only
    def loader(layer: int, position: str | int) -> LayerData:  # valid pairs only (the prompt position: dense)
        return load_layer(store, hook, layer, position, cfg.depths, pairs_only=True)

    result = run_sweep(loader, layers, probe, plan, position_arg(cfg.position), texts=store_texts(store, cfg.depths, meta), answers=answers)
    if answers is None:
        result.notes.append("per-answer numbers skipped: --depths keeps only some of the checks the guard makes")
    result.hook, result.position, result.provenance = hook, cfg.position, jsonable(store.provenance)
    result.config = {"sweep": to_dict(cfg), "probe": to_dict(probe)}
    return result


def train(store: str | Path | ActivationStore | None = None, cfg: TrainConfig | None = None,
          probe: ProbeConfig | None = None, *, out: str | Path | None = None, progress: bool = True) -> ProbeSet:
    """Fit the held-out probe set on ``store`` (default ``cfg.store``): layer choice by grouped CV on the training
    prompts, the threshold on the calibration prompts' own answers, every number on the test prompts
    (``probes.metrics["test"]``). Saved with its configs into ``out`` (default ``cfg.out``) when one is given."""
    cfg, probe = cfg or TrainConfig(), probe or ProbeConfig()
    out = out if out is not None else (cfg.out or None)
    if out:
        check_out(out, "file" if Path(out).suffix in (".json", ".safetensors") else "dir")
    with using_store(store if store is not None else cfg.store) as opened, with_added(opened, cfg.augment) as (
            both, train_only):
        probes = train_probeset(both, cfg, probe, progress=progress, train_only=train_only)
    if out:
        save_probeset(probes, cfg, probe, out)
    return probes


def readout_transfer(store: str | Path | ActivationStore, probes: str | Path | ProbeSet, cfg: TrainConfig | None = None,
                     probe: ProbeConfig | None = None, *, out: str | Path | None = None):
    """Leave one source out at the readout ``probes`` deploys (its layers, stacked when it is) on ``store``, with
    ``cfg``'s folds, depths and schedule (default: the probe set's own training config): a
    :class:`~interp.probes.transfer.ReadoutLoso`, saved as ``loso.json`` + ``loso.md`` into ``out`` when given."""
    from interp.config import from_dict
    from interp.probes.transfer import readout_loso

    if out:
        check_out(out, "dir")
    with using_store(store) as opened:
        if isinstance(probes, ProbeSet):
            ps = probes
            ps.check_provenance(opened.provenance)  # a set in memory is held to the store like one on disk
        else:
            ps = ProbeSet.load(probes, expect_provenance=opened.provenance)
        cfg = cfg or from_dict(TrainConfig, ps.config["train"])
        probe = probe or from_dict(ProbeConfig, ps.config["probe"])
        result = readout_loso(opened, ps, cfg, probe)
    if out:
        result.save(Path(out) / "loso.json")
        (Path(out) / "loso.md").write_text(result.summary() + "\n")
    return result


def levers(store: str | Path | ActivationStore | None = None, cfg=None, probe: ProbeConfig | None = None, *,
           out: str | Path | None = None, progress: bool = True):
    """Measure ``cfg.levers`` (:class:`interp.probes.levers.LeverConfig`) against the base recipe on ``store``
    (default ``cfg.store``): a :class:`~interp.probes.levers.LeverResult`, saved with its configs into ``out``
    (default ``cfg.out``) when one is given."""
    from interp.probes.levers import LeverConfig, compare_levers

    return _compare_on_store(compare_levers, store, cfg or LeverConfig(), probe, out, progress)


def positions(store: str | Path | ActivationStore | None = None, cfg=None, probe: ProbeConfig | None = None, *,
              out: str | Path | None = None, progress: bool = True):
    """Compare read positions on ``store`` (default ``cfg.store``; :class:`interp.probes.positions.PositionsConfig`):
    a :class:`~interp.probes.positions.PositionsResult`, saved with its configs into ``out`` (default ``cfg.out``)
    when one is given."""
    from interp.probes.positions import PositionsConfig, compare_positions

    return _compare_on_store(compare_positions, store, cfg or PositionsConfig(), probe, out, progress)


def _compare_on_store(compare, store, cfg, probe: ProbeConfig | None, out, progress: bool):
    """``compare(opened store, cfg, probe)`` with the output folder and ``cfg`` checked before the store is read,
    the result saved into ``out`` (default ``cfg.out``) with both configs beside it."""
    probe = probe or ProbeConfig()
    out = out if out is not None else (cfg.out or None)
    if out:
        check_out(out, "dir")
    cfg.validate()  # every option (each lever name) before the store is read
    with using_store(store if store is not None else cfg.store) as opened:
        result = compare(opened, cfg, probe, progress=progress)
    if out:
        result.save(out)
        save_config(cfg, Path(out) / "config.json")
        save_config(probe, Path(out) / "probe_config.json")
    return result


def require_out(out: str | None) -> str:
    """The CLI's ``--out``, which the library leaves optional."""
    if not out:
        raise UserError("give --out DIR")
    return out
