"""Leave one source out at a probe set's own readout: the layers the guard reads, one probe or the stacked
regression, refitted on grouped folds of every row without each held-out source.

The sweep's leave-one-source-out reads the single layer with the best out-of-fold AUROC; this reads what the
probe set deploys (``probes.readout``, stacked when it is), so the transfer number is the deployed recipe's. A
mean of per-layer probes has no single fold model to score a source with: it is reported as not computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np

from interp.probes.oof import ProbeConfig
from interp.probes.train import TrainConfig, judged_out
from interp.results import Result

__all__ = ["ReadoutLoso", "readout_loso"]


@dataclass
class ReadoutLoso(Result):
    """Per held-out source: probe and n-gram AUROC, probe − n-gram, the per-answer rate at a threshold set on the
    other sources; the mean over sources and the worst one (:func:`interp.probes.loso.leave_one_source_out`)."""

    kind = "readout-loso"
    readout: dict[str, Any]
    loso: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def macro(self) -> dict | None:
        return (self.loso.get("macro") or {}).get("probe")

    @property
    def worst(self) -> dict | None:
        return (self.loso.get("worst_by_method") or {}).get("probe")

    def table(self) -> list[str]:
        """The per-source table and the mean / worst lines (one line when it was not computed)."""
        from interp.probes.tables import loso_table

        return loso_table(self.loso or {"note": self.note})

    def summary(self) -> str:
        what = f"layers {self.readout['layers']}" + (" (stacked)" if self.readout.get("stacked") else "")
        return "\n".join([f"Leave-one-source-out at the readout, {what}:", *self.table()])


def readout_loso(store, probes, train_cfg: TrainConfig, probe_cfg: ProbeConfig, *, texts=None,
                 answers=None) -> ReadoutLoso:
    """Leave one source out at ``probes``' readout on an open store, with ``train_cfg``'s depths, folds, seed,
    schedule and calibration population (``texts`` / ``answers`` from :mod:`interp.probes.stores` when already
    read)."""
    from interp.probes.cv import Split, grouped_folds
    from interp.probes.data import finished_meta, load_layer
    from interp.probes.loso import leave_one_source_out
    from interp.probes.stack import stack_layers
    from interp.probes.stores import store_answers, store_texts
    from interp.probes.sweep import SweepPlan

    stacked = bool(probes.metrics["readout"].get("stacked"))
    readout = {"layers": [int(x) for x in probes.readout], "hook": probes.hook, "stacked": stacked,
               "position": str(probes.position)}
    if len(probes.readout) > 1 and not stacked:
        return ReadoutLoso(readout, note="not computed for a mean of per-layer probes (no single fold model to "
                                         "score a source)")
    loads = [partial(load_layer, store, probes.hook, layer, probes.position, train_cfg.depths, pairs_only=True)
             for layer in probes.readout]
    data = stack_layers(loads) if stacked else loads[0]()
    probe = replace(probe_cfg, standardize=True) if stacked else probe_cfg
    split = grouped_folds(data.y, data.groups, train_cfg.folds, train_cfg.seed)
    if train_cfg.drop_judged_harmless:  # left out of the training folds, still scored when tested
        out = judged_out(train_cfg, finished_meta(store), np.ones(len(data.y), bool))
        split = Split(split.train & ~out[None], split.test, split.kind)
    plan = SweepPlan(folds=train_cfg.folds, seed=train_cfg.seed, n_boot=train_cfg.n_boot,
                     target_fpr=train_cfg.target_fpr, schedule=train_cfg.schedule(getattr(store, "answer_length", None)),
                     calibrate_on=tuple(train_cfg.calibrate_on))
    texts = texts if texts is not None else store_texts(store, train_cfg.depths)
    answers = answers if answers is not None else store_answers(store)
    return ReadoutLoso(readout, loso=leave_one_source_out(data, split, probe, plan, texts, answers))
