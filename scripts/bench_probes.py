"""Benchmark: all-layer sweep with grouped 5-fold CV, batched torch solver vs a loop of scikit-learn fits.

Writes a synthetic store shaped like a real one (layers x rows x d_model, float16, one HDF5 dataset per layer) to
a temporary file and streams it one layer at a time for both methods (peak memory holds one layer). Both sides
solve the same problem (L2 logistic regression, same C, class weighting, scaling and folds); the score is the
pooled out-of-fold AUROC per layer. Timing is process CPU time with ``--threads`` (default 1) for both sides,
which is robust to other jobs sharing the machine; wall-clock is printed too. Last line: ``speedup_vs_sklearn=<x> auroc_gap=<y>``.

    python scripts/bench_probes.py            # 24 layers x ~20k rows x 896
    python scripts/bench_probes.py --small    # quick check
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from threadpoolctl import threadpool_limits

from interp.probes.cv import grouped_folds
from interp.probes.fit import fit_logreg_torch, fit_sklearn
from interp.probes.metrics import auroc
from interp.probes.synthetic import SyntheticSet, SyntheticSpec

HOOK = "blocks.{}.hook_resid_post"


def write_store(path: Path, ss: SyntheticSet) -> None:
    """One float16 dataset ``/acts/<hook>/layer_<L>`` [N, D, 1, d] per layer, written layer by layer."""
    with h5py.File(path, "w") as f:
        ex = f.create_group("examples")
        ex["label"] = ss.y
        ex["prompt"] = ss.groups.astype("S")
        ex["valid"] = ss.valid
        f["depths"] = ss.depths
        acts = f.create_group(f"acts/{HOOK}")
        for layer in range(ss.spec.n_layers):
            acts.create_dataset(f"layer_{layer}", data=ss.layer_array(layer)[:, :, None, :].astype(np.float16))


def stream(path: Path, n_layers: int):
    """Yield ``(layer, X [M, d] float32)`` for valid (row, depth) pairs, one layer in memory at a time."""
    with h5py.File(path, "r") as f:
        valid = f["examples/valid"][()]
        for layer in range(n_layers):
            yield layer, f[f"acts/{HOOK}/layer_{layer}"][:, :, 0, :][valid].astype(np.float32)


def run(path: Path, n_layers: int, y: np.ndarray, split, method: str, C: float, standardize: bool, tol: float
        ) -> tuple[float, float, list[float], list[float]]:
    aucs, iters = [], []
    t0, c0 = time.perf_counter(), time.process_time()
    for _layer, X in stream(path, n_layers):
        oof = np.zeros(len(y))
        if method == "torch":
            params = fit_logreg_torch(X, y, split.train, C=C, standardize=standardize, tol=tol, max_iter=1000)
            iters.append(float(params.info["n_iter"].max()))  # all folds advance together
            for f in range(split.n_folds):
                oof[split.test[f]] = params[0, f].logit(X[split.test[f]])
        else:
            for f in range(split.n_folds):
                p = fit_sklearn(X[split.train[f]], y[split.train[f]], C=C, standardize=standardize,
                                max_iter=1000, tol=tol)
                iters.append(p.info["n_iter"])
                oof[split.test[f]] = p.logit(X[split.test[f]])
        aucs.append(auroc(oof, y))
    return time.process_time() - c0, time.perf_counter() - t0, aucs, iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="4 layers x ~2k rows x 256 dims")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--prompts", type=int, default=1250)
    ap.add_argument("--depths", type=int, default=20)
    ap.add_argument("--d-model", type=int, default=896)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--C", type=float, default=1.0)
    ap.add_argument("--standardize", action="store_true")
    ap.add_argument("--anisotropy", type=float, default=0.75, help="log-normal spread of per-dim scales")
    ap.add_argument("--tol", type=float, default=1e-5, help="gradient tolerance (same meaning on both sides)")
    ap.add_argument("--threads", type=int, default=1, help="BLAS/torch threads for both sides")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    if args.small:
        args.layers, args.prompts, args.depths, args.d_model = 4, 250, 10, 256
    spec = SyntheticSpec(n_prompts=args.prompts, n_depths=args.depths, d_model=args.d_model, n_layers=args.layers,
                         signal=tuple(np.linspace(0.1, 2.0, args.layers).tolist()), margin_noise=1.0,
                         prompt_noise=1.0, depth_noise=0.3, anisotropy=args.anisotropy, invalid_frac=0.2, seed=args.seed)
    ss = SyntheticSet(spec)
    rows = np.nonzero(ss.valid)[0]
    y, groups = ss.y[rows], ss.groups[rows]
    split = grouped_folds(ss.y, ss.groups, args.folds, seed=args.seed).for_pairs(rows)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench_store.h5"
        t = time.perf_counter()
        write_store(path, ss)
        layer_mb = len(rows) * args.d_model * 4 / 2**20
        print(f"store: {args.layers} layers x {len(rows)} rows ({len(np.unique(groups))} prompts) x {args.d_model}"
              f" float16, {path.stat().st_size / 2**20:.0f} MiB written in {time.perf_counter() - t:.1f}s;"
              f" one layer float32 = {layer_mb:.0f} MiB, all layers = {layer_mb * args.layers:.0f} MiB")
        t_torch, w_torch, auc_torch, it_torch = run(path, args.layers, y, split, "torch", args.C, args.standardize,
                                                    args.tol)
        print(f"torch batched L-BFGS: cpu {t_torch:.1f}s wall {w_torch:.1f}s  mean AUROC {np.mean(auc_torch):.4f}"
              f"  iterations per layer (all folds at once) {np.mean(it_torch):.0f}")
        t_sk, w_sk, auc_sk, it_sk = run(path, args.layers, y, split, "sklearn", args.C, args.standardize, args.tol)
        print(f"sklearn lbfgs loop:   cpu {t_sk:.1f}s wall {w_sk:.1f}s  mean AUROC {np.mean(auc_sk):.4f}"
              f"  iterations per fit {np.mean(it_sk):.0f}")
    gaps = np.abs(np.array(auc_torch) - np.array(auc_sk))
    for layer in range(args.layers):
        print(f"  layer {layer:2d}: AUROC torch {auc_torch[layer]:.4f} sklearn {auc_sk[layer]:.4f}")
    print(f"wall-clock ratio {w_sk / w_torch:.2f} (noisy on a shared machine); headline uses process CPU time")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(f"speedup_vs_sklearn={t_sk / t_torch:.2f} auroc_gap={gaps.max():.4f}")


if __name__ == "__main__":
    main()
