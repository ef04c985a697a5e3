"""Per-answer separation of a study run's probe set on its own test answers, without the calibration's noise.

For each run folder (`anydepth demo --out RUN`): the probe set's deployed readout scores every test answer on every
check the guard makes; the script prints the AUROC of those per-answer scores between the model's own benign
answers (the kinds the threshold is calibrated on) and the harmful answers, and the TPR at thresholds that let 0, 1
or 2 own test answers fire. These thresholds are read off the test answers themselves: a diagnostic for comparing
recipes, not an operating point to deploy (the study's own threshold comes from the calibration prompts).

    python scripts/answer_diagnostic.py runs/study runs/study-insertion
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from interp.config import from_dict
from interp.extract.store import ActivationStore
from interp.probes.answers import Deployed, answer_scores, calibration_rows
from interp.probes.data import examples_meta
from interp.probes.fit import LinearParams
from interp.probes.probeset import ProbeSet
from interp.probes.protocol import Schedule
from interp.probes.readout import readout_scores
from interp.probes.train import TrainConfig


def run_folder(run: Path) -> Path:
    """The model folder of a study run (the one holding results.json)."""
    found = sorted(run.glob("*/results.json")) or sorted(run.glob("results.json"))
    if not found:
        raise SystemExit(f"{run}: no results.json (give an `anydepth demo --out` folder)")
    return found[0].parent


def diagnose(run: Path) -> str:
    root = run_folder(run)
    result = json.loads((root / "results.json").read_text())
    probes = ProbeSet.load(root / result["probes"])
    cfg = from_dict(TrainConfig, probes.config["train"])
    schedule = Schedule.from_dict(probes.schedule)  # the guard's checks the threshold was calibrated for
    params = [LinearParams(*map(np.asarray, probes.folded(layer))) for layer in probes.readout]
    with ActivationStore.open(next(root.glob("extract-*/store.h5"))) as store:
        meta = examples_meta(store)
        scores, ends, kept = readout_scores(store, probes.hook, probes.readout, probes.position, cfg.depths, params)
    own = calibration_rows(meta["y"], meta["kinds"], meta["sources"], cfg.calibrate_on, cfg.control_sources)
    test = np.isin(meta["groups"], probes.split["test"]["groups"])  # the test prompts the probe set records
    answers = answer_scores(scores[test], kept.depths, Deployed.of(meta, schedule.answer_length).subset(test),
                            schedule, ends[test])
    y, benign, s = meta["y"][test], own[test], answers.score
    pair = (y == 1) | benign
    line = [f"{run}: {int(benign.sum())} own benign and {int((y == 1).sum())} harmful test answers; per-answer "
            f"AUROC {roc_auc_score(y[pair], s[pair]):.3f}"]
    ranked = np.sort(s[benign])[::-1]
    for k in (0, 1, 2):
        thr = np.nextafter(np.float32(ranked[k]), np.float32(2))
        line.append(f"TPR with {k} own firing {np.mean(s[y == 1] >= thr):.2f}")
    return "; ".join(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="study run folders (anydepth demo --out)")
    for run in ap.parse_args().runs:
        print(diagnose(run), flush=True)


if __name__ == "__main__":
    main()
