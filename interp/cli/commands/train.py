"""``anydepth train``: fit one probe per layer on a store and save a ``ProbeSet`` (safetensors + JSON).

The work is :func:`interp.probes.train.train_probeset`; this module only parses options and reports.
"""

from __future__ import annotations

from pathlib import Path

from interp.cli.naming import check_out
from interp.config import add_arguments, from_namespace


def register(subparsers) -> None:
    from interp.probes.oof import ProbeConfig
    from interp.probes.train import TrainConfig

    p = subparsers.add_parser("train", help="fit per-layer probes on a store and save a ProbeSet")
    add_arguments(p, TrainConfig)
    add_arguments(p, ProbeConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    from interp import UserError
    from interp.cli.commands.sweep import open_store
    from interp.probes.oof import ProbeConfig
    from interp.probes.train import TrainConfig, save_probeset, train_probeset

    cfg, probe = from_namespace(TrainConfig, args), from_namespace(ProbeConfig, args)
    if not cfg.out:
        raise UserError("give --out DIR")
    check_out(cfg.out, "file" if Path(cfg.out).suffix in (".json", ".safetensors") else "dir")
    with open_store(cfg.store) as store:
        probes = train_probeset(store, cfg, probe)
    path = save_probeset(probes, cfg, probe, cfg.out)
    for line in summary_lines(probes):
        print(line)
    print(f"wrote {path}")
    return 0


def summary_lines(probes) -> list[str]:
    """What ``anydepth train`` prints: CV on the training prompts, the calibration, held-out test numbers."""
    best, cal, test = probes.best_layer, probes.thresholds["calibration"], probes.metrics.get("test")
    a = probes.metrics["cv_train"][str(best)]["auroc"]
    sp = probes.split
    lines = [f"split (prompt groups): train {len(sp['train']['groups'])}, calibration "
             f"{len(sp['calibration']['groups'])}, test {len(sp['test']['groups'])}",
             f"best layer {best}: grouped-CV AUROC on the training prompts {a['value']:.3f} "
             f"[{a['lo']:.3f}, {a['hi']:.3f}]"
             + (f"; the guard reads a multi-layer probe: mean of the logits at layers {probes.combine}"
                if probes.combine else ""),
             f"rule: {probes.thresholds.get('rule', 'per answer (any check)')}",
             f"threshold {cal['threshold']:.4f}: per-answer target FPR {cal['target_fpr']} on {cal['n_answers']} "
             f"benign answers from {cal['basis']}" + ("" if cal["resolved"] else
                                                      f" (unresolved: finest FPR {cal['resolution']:.3f})")]
    if test:
        pa = test["per_answer"]
        parts = []
        for m, s in test["per_check"].items():
            if s is not None:
                parts.append(f"{m} {s['auroc']['value']:.3f} [{s['auroc']['lo']:.3f}, {s['auroc']['hi']:.3f}]")
        lines.append(f"held-out test ({test['n_prompts']} prompt groups) AUROC per check: " + "; ".join(parts))
        def fmt(r):
            return ("n/a" if r["rate"] is None else f"{r['rate']:.2f} [{r['lo']:.2f}, {r['hi']:.2f}] "
                       f"({r['k']}/{r['n']})")
        lines.append(f"held-out test per answer at the threshold: TPR {fmt(pa['tpr'])}, FPR {fmt(pa['fpr'])}")
    else:
        lines.append("no test split (--test-fraction 0): no held-out numbers")
    return lines
