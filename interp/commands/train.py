"""``anydepth train``: fit one probe per layer on a store and save a ``ProbeSet`` (safetensors + JSON).

The work is :func:`interp.probes.train.train_probeset`; this module only parses options and reports.
"""

from __future__ import annotations

from interp.config import add_arguments, from_namespace


def register(subparsers) -> None:
    from interp.probes.sweep import ProbeConfig
    from interp.probes.train import TrainConfig

    p = subparsers.add_parser("train", help="fit per-layer probes on a store and save a ProbeSet")
    add_arguments(p, TrainConfig)
    add_arguments(p, ProbeConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    from interp import UserError
    from interp.commands.sweep import open_store
    from interp.probes.sweep import ProbeConfig
    from interp.probes.train import TrainConfig, save_probeset, train_probeset

    cfg, probe = from_namespace(TrainConfig, args), from_namespace(ProbeConfig, args)
    if not cfg.out:
        raise UserError("give --out DIR")
    with open_store(cfg.store) as store:
        probes = train_probeset(store, cfg, probe)
    path = save_probeset(probes, cfg, probe, cfg.out)
    best, thr = probes.best_layer, probes.threshold
    a = probes.metrics["cv"][str(best)]["auroc"]
    print(f"best layer {best}: CV AUROC {a['value']:.3f} [{a['lo']:.3f}, {a['hi']:.3f}]; threshold {thr:.4f} "
          f"(target FPR {cfg.target_fpr}: out-of-fold TPR {probes.thresholds['oof']['tpr']:.3f}, "
          f"FPR {probes.thresholds['oof']['fpr']:.3f})")
    print(f"wrote {path}")
    return 0
