"""Paper-scale probe sweep: time per layer and peak memory of ``run_sweep`` on synthetic stores of growing size.

The paper's corpus is about 30k responses x 20 depths, 32 layers, d_model 4096 (a bf16 store of ~160 GB for one
position: more disk than a laptop has), so this writes smaller stores of the same shape (bf16 storage, one span
position, an end slot, a planted direction per layer) and sweeps each in a fresh process, which reports its peak
resident memory. Cost linear in rows shows as a flat ``pairs/s``; peak memory independent of layer count as the
same peak for two layer counts at the largest size.

    python scripts/bench_scale.py                       # quick: 1k, 2k, 4k responses, d 1024, 4 layers
    python scripts/bench_scale.py --responses 2000 4000 8000 --d-model 4096
    python scripts/bench_scale.py --responses 2000 --d-model 4096 --train   # also `train`'s time and peak

Last line: ``rows_per_s=<x> peak_gib=<y>`` ((response, depth) rows per second per layer, and peak GiB, of the
largest size, with the solver's default memory rule: a centred copy of the rows when it fits in the memory available
less a reserve; ``--chunked`` also times the no-copy path a layer takes when it does not).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_store(path: Path, n: int, depths: int, layers: int, d: int, chunk: int = 256, seed: int = 0) -> None:
    """A bf16 store of ``n`` responses, written ``chunk`` rows at a time (memory bounded by one chunk)."""
    from interp.extract.store import ActivationStore

    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 2)
    ends = np.where(rng.random(n) < 0.2, rng.integers(1, depths, n), depths)
    valid = np.arange(depths)[None, :] < ends[:, None]
    grid = np.arange(depths) * 25
    n_tokens = grid[ends - 1] + 5
    prov = {"model_id": "synthetic-scale", "weights_sha256": "w0", "template_hash": "t0", "span_ids": [7],
            "probe_index": 0, "answer_length": int(n_tokens.max())}
    examples = {"id": [f"e{i}" for i in range(n)], "label": y.tolist(), "source": [f"src{i % 4}" for i in range(n)],
                "kind": ["own"] * n, "prompt": [f"p{i}" for i in range(n)], "category": [""] * n,
                "n_response_tokens": n_tokens.tolist(), "valid": valid, "end_depth": n_tokens.tolist(),
                "finished": [True] * n}
    dirs = rng.normal(size=(layers, d)).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    store = ActivationStore.create(path, prov, examples, depths=grid.tolist(), hooks=["resid_post"],
                                   layers=list(range(layers)), positions=[0], d_model=d, storage_dtype="bfloat16")
    with store:
        for start in range(0, n, chunk):
            rows = np.arange(start, min(n, start + chunk))
            sign = (2 * y[rows] - 1).astype(np.float32)
            acts, last, prompt = {}, {}, {}
            for layer in range(layers):
                base = rng.normal(size=(len(rows), 1, d)).astype(np.float32)
                x = base + 0.3 * rng.normal(size=(len(rows), depths + 1, d)).astype(np.float32)
                x += (0.5 * (layer + 1) * sign + rng.normal(size=len(rows)).astype(np.float32))[:, None, None] * dirs[layer]
                acts[("hook_resid_post", layer)] = x[:, :, None, :]
                last[("hook_resid_post", layer)] = np.zeros((len(rows), depths + 1, d), np.float32)
                prompt[("hook_resid_post", layer)] = np.zeros((len(rows), d), np.float32)
            store.write_rows(rows.tolist(), acts, last, prompt)


def sweep_once(path: str, layers: int, copy_budget: int | None = None) -> dict:
    """Run in a fresh process: the probe sweep (no baselines) over the first ``layers`` layers; ``copy_budget``
    sets the solver's (``interp.probes.fit.COPY_BUDGET``; 0: centre the rows in chunks, never copy them)."""
    import resource

    import interp.probes.fit as fit
    from interp.extract.store import ActivationStore
    from interp.probes.data import load_layer
    from interp.probes.oof import ProbeConfig
    from interp.probes.sweep import SweepPlan, run_sweep

    fit.COPY_BUDGET = copy_budget
    times = []
    with ActivationStore.open(path) as store:
        def loader(layer, position):
            times.append(time.perf_counter())
            return load_layer(store, "hook_resid_post", layer, position, pairs_only=True)

        start = time.perf_counter()
        res = run_sweep(loader, list(range(layers)), ProbeConfig(), SweepPlan(baselines=(), n_boot=0))
        total = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    auc = [r["auroc"]["value"] for r in res.per_layer["probe"]]
    return {"seconds": total, "per_layer": total / layers, "peak_gib": peak, "pairs": res.n_pairs, "auroc": auc}


def train_once(path: str, layers: int, stack: int = 0) -> dict:
    """Run in a fresh process: ``train`` (the held-out probe set: CV on the training prompts per layer, the final
    fits, calibration and the held-out report) over the first ``layers`` layers; ``stack`` K > 0: the readout is
    one regression on the K best layers' concatenated features (``--combine-top K --stack true``)."""
    import resource

    from interp.probes.run import train
    from interp.probes.train import TrainConfig

    cfg = TrainConfig(layers=list(range(layers)), n_boot=0, stride=25, calib_fraction=0.25, test_fraction=0.25,
                      combine_top=stack, stack=stack > 0)
    start = time.perf_counter()
    probes = train(path, cfg, progress=False)
    total = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return {"seconds": total, "per_layer": total / layers, "peak_gib": peak, "best_layer": probes.best_layer}


def run_child(path: Path, layers: int, copy_budget: int | None = None, what: str = "sweep", stack: int = 0) -> dict:
    call = (f"bench_scale.sweep_once({str(path)!r}, {layers}, {copy_budget!r})" if what == "sweep" else
            f"bench_scale.train_once({str(path)!r}, {layers}, {stack})")
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_scale; "
            f"print(json.dumps({call}))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--responses", type=int, nargs="+", default=[1000, 2000, 4000])
    ap.add_argument("--depths", type=int, default=20)
    ap.add_argument("--layers", type=int, default=4, help="layers in each store (the largest is also swept at half)")
    ap.add_argument("--d-model", type=int, default=1024)
    ap.add_argument("--tmp", default=None, help="folder for the synthetic stores (default: a temporary folder)")
    ap.add_argument("--chunked", action="store_true",
                    help="also sweep the largest size with the solver centring rows in chunks (the path it takes "
                         "when a layer does not fit in memory twice)")
    ap.add_argument("--train", action="store_true",
                    help="also run `train` (held-out probe set) on the largest size: time per layer and peak memory")
    ap.add_argument("--train-stack", type=int, default=0, metavar="K",
                    help="with --train: also train the stacked readout of the K best layers (--combine-top K --stack)")
    args = ap.parse_args()
    sizes = sorted(args.responses)
    print(f"synthetic bf16 stores: {args.depths} depths, {args.layers} layers, d_model {args.d_model}; "
          f"sweep = probe only, grouped 5-fold CV, one fresh process per run", flush=True)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        rows = []
        for n in sizes:
            path = Path(tmp) / f"scale-{n}.h5"
            t = time.perf_counter()
            write_store(path, n, args.depths, args.layers, args.d_model)
            written = time.perf_counter() - t
            runs = [(args.layers, "", run_child(path, args.layers))]
            if n == sizes[-1] and args.layers > 1:
                runs.append((args.layers // 2, "", run_child(path, args.layers // 2)))
            if n == sizes[-1] and args.chunked:
                runs.append((args.layers, ", rows centred in chunks", run_child(path, args.layers, 0)))
            for layers, how, r in runs:
                layer_gib = r["pairs"] * args.d_model * 4 / 2**30
                if not how:
                    rows.append((n, layers, r))
                print(f"responses {n:6d} ({r['pairs']} rows) layers {layers}{how}: {r['per_layer']:.1f} s/layer, "
                      f"{r['pairs'] / r['per_layer']:.0f} rows/s per layer, peak {r['peak_gib']:.2f} GiB "
                      f"(one layer's rows as float32: {layer_gib:.2f} GiB; store written in {written:.0f} s; "
                      f"AUROC {min(r['auroc']):.3f}-{max(r['auroc']):.3f})", flush=True)
            if n == sizes[-1] and args.train:
                for stack in (0, args.train_stack) if args.train_stack else (0,):
                    t = run_child(path, args.layers, what="train", stack=stack)
                    how = f", stacked readout of {stack} layers" if stack else ""
                    print(f"train on responses {n:6d}, layers {args.layers}{how}: {t['per_layer']:.1f} s/layer, "
                          f"peak {t['peak_gib']:.2f} GiB (one layer's rows as float32: {layer_gib:.2f} GiB)", flush=True)
            path.unlink()
    n, layers, r = next(x for x in rows if x[0] == sizes[-1] and x[1] == args.layers)
    print(f"rows_per_s={r['pairs'] / r['per_layer']:.1f} peak_gib={r['peak_gib']:.2f}")


if __name__ == "__main__":
    main()
