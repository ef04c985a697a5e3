"""Per-answer separation of a study run's probe set on its own test answers, without the calibration's noise.

For each run folder (`anydepth demo --out RUN`): the probe set's deployed readout scores every test answer on every
check the guard makes; the script prints the AUROC of those per-answer scores between the model's own benign
answers (the kinds the threshold is calibrated on) and the harmful answers, and the TPR at thresholds that let 0, 1
or 2 own test answers fire. These thresholds are read off the test answers themselves: a diagnostic for comparing
recipes, not an operating point to deploy (the study's own threshold comes from the calibration prompts).

    python scripts/answer_diagnostic.py runs/study runs/study-insertion

`anydepth compare RUN...` prints this beside the rest of each run's held-out numbers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from interp.formatting import ci
from interp.study.compare import answer_separation


def diagnose(run: Path) -> str:
    s = answer_separation(run)
    tprs = "; ".join(f"TPR with {k} own firing {t:.2f}" for k, t in enumerate(s.tpr_at_own_firing))
    return (f"{run}: {s.n_benign} own benign and {s.n_harmful} harmful test answers; per-answer AUROC "
            f"{ci(s.auroc)}; {tprs}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="study run folders (anydepth demo --out)")
    for run in ap.parse_args().runs:
        print(diagnose(run), flush=True)


if __name__ == "__main__":
    main()
