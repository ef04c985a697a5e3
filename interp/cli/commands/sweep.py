"""``anydepth sweep``: grouped-CV probes over layers and depths of a store, with baselines, plots and JSON."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from interp.config import add_arguments, from_namespace
from interp.probes.data import StoreSliceConfig
from interp.probes.protocol import ScheduleConfig


@dataclass
class SweepCliConfig(StoreSliceConfig, ScheduleConfig):
    """Which store and which slice of it to sweep."""

    out: str = field(default="", metadata={"help": "output directory (JSON, plots, config)"})
    n_boot: int = field(default=1000, metadata={"help": "bootstrap resamples (by prompt) for 95% CIs"})
    per_depth_fit: bool = field(default=False, metadata={"help": "train one probe per depth instead of pooling"})
    baselines: list[str] = field(default_factory=lambda: ["last_token", "prompt", "diffmeans", "shuffled", "ngram"],
                                 metadata={"help": "baselines on identical splits"})
    train_sources: list[str] | None = field(default=None, metadata={"help": "train on these sources only ..."})
    test_sources: list[str] | None = field(default=None, metadata={"help": "... and test on these"})


def register(subparsers) -> None:
    from interp.probes.oof import ProbeConfig

    p = subparsers.add_parser("sweep", help="cross-validated probes over layers x depths, baselines, plots")
    add_arguments(p, SweepCliConfig)
    add_arguments(p, ProbeConfig)
    p.set_defaults(func=run)


def position_arg(text: str) -> str | int:
    return int(text) if text.lstrip("-").isdigit() else text


def open_store(path: str):
    from interp import UserError
    from interp.extract.store import ActivationStore

    if not path:
        raise UserError("give --store PATH (an activation store from `anydepth extract`)")
    if not Path(path).exists():
        raise UserError(f"no store at {path}")
    return ActivationStore.open(path)


def store_texts(store, depths=None, meta: dict | None = None):
    """``[N_done, D]`` texts the probe has seen at each selected depth, or None for a store without text."""

    from interp.probes.data import examples_meta
    from interp.probes.ngram import depth_texts

    meta = examples_meta(store) if meta is None else meta
    if "response_chars" not in meta:
        return None
    all_depths = [int(d) for d in store.depths]
    cols = [all_depths.index(int(d)) for d in depths] if depths else list(range(len(all_depths)))
    done = meta["done"]
    return depth_texts(meta["prompts"][done], meta["response"][done], meta["response_chars"][done][:, cols])


def store_answers(store, meta: dict | None = None):
    """:class:`interp.probes.loso.AnswerInfo` of a store's finished rows (each answer as deployed at the store's
    answer length, its kind, the text at its end)."""
    from interp.probes.answers import Deployed
    from interp.probes.data import examples_meta
    from interp.probes.loso import AnswerInfo
    from interp.probes.ngram import depth_texts

    meta = examples_meta(store) if meta is None else meta
    done = meta["done"]
    rows = {k: v[done] for k, v in meta.items() if hasattr(v, "__len__") and len(v) == len(done)}
    end_texts = None
    if "end_chars" in meta and "response" in meta:
        end_texts = depth_texts(rows["prompts"], rows["response"], rows["end_chars"])
    return AnswerInfo(Deployed.of(rows, getattr(store, "answer_length", None)), rows["kinds"], end_texts)


def run(args) -> int:
    import numpy as np

    from interp import UserError
    from interp.config import save_config, to_dict
    from interp.extract.store import canonical_hook
    from interp.probes.data import load_layer
    from interp.probes.plots import (
        plot_depth_curve,
        plot_layer_depth_heatmap,
        plot_layer_sweep,
        plot_reliability,
        plot_score_histograms,
    )
    from interp.probes.probeset import jsonable
    from interp.probes.sweep import ProbeConfig, SweepConfig, run_sweep

    cli, probe = from_namespace(SweepCliConfig, args), from_namespace(ProbeConfig, args)
    if not cli.out:
        raise UserError("give --out DIR")
    store = open_store(cli.store)
    with store:
        from interp.probes.data import require_finished

        require_finished(store, cli.allow_partial)
        hook = canonical_hook(cli.hook) if cli.hook else store.hooks[0]
        cli.validate()
        layers = cli.resolve_layers(store)
        from interp.probes.data import examples_meta
        from interp.probes.protocol import check_schedule

        check_schedule(cli)
        cfg = SweepConfig(layers=layers, folds=cli.folds, seed=cli.seed, n_boot=cli.n_boot,
                          per_depth_fit=cli.per_depth_fit, baselines=tuple(cli.baselines), target_fpr=cli.target_fpr,
                          control_sources=cli.control_sources, train_sources=cli.train_sources,
                          test_sources=cli.test_sources, schedule=cli.schedule(getattr(store, "answer_length", None)),
                          calibrate_on=tuple(cli.calibrate_on))
        _check_depths(store, cli.depths)

        def loader(layer, position):
            return load_layer(store, hook, layer, position, cli.depths)

        meta = examples_meta(store)
        # per-answer numbers count every check the guard makes: only on the whole depth grid
        answers = store_answers(store, meta) if not cli.depths else None
        res = run_sweep(loader, layers, probe, cfg, position_arg(cli.position),
                        texts=store_texts(store, cli.depths, meta), answers=answers)
        if answers is None:
            res["notes"].append("per-answer numbers skipped: --depths keeps only some of the checks the guard makes")
        provenance = jsonable(store.provenance)
    out = Path(cli.out)
    out.mkdir(parents=True, exist_ok=True)
    oof, labels = res.pop("_oof"), res.pop("_labels")
    res.update(hook=hook, position=cli.position, store=str(cli.store), provenance=provenance,
               config={"sweep": to_dict(cli), "probe": to_dict(probe)})
    tmp = out / "sweep.json.tmp"
    tmp.write_text(json.dumps(jsonable(res), indent=1) + "\n")
    os.replace(tmp, out / "sweep.json")
    save_config(cli, out / "config.json")
    save_config(probe, out / "probe_config.json")
    np.savez_compressed(out / "oof_scores.npz", **{m: v for m, v in oof.items()})
    best_i = res["layers"].index(res["best_layer"])
    p = oof["probe"][best_i]
    rows, cols = np.nonzero(np.isfinite(p))
    thr = (res["best"].get("threshold") or {}).get("threshold")
    plot_layer_sweep(res, out / "layer_sweep")
    plot_layer_depth_heatmap(res, out / "layer_depth_auroc")
    plot_depth_curve(res, out / "depth_curve")
    plot_score_histograms(p[rows, cols], labels[rows], out / "score_hist", thr,
                          f"out-of-fold scores, layer {res['best_layer']}, all depths")
    plot_reliability(res["best"]["reliability"], out / "reliability", res["best"]["ece"])
    _report(res)
    print(f"wrote {out}/sweep.json, plots and configs")
    return 0


def _check_depths(store, depths) -> None:
    """``--depths`` the store lacks: one line naming them and what it holds."""
    from interp import UserError

    if depths:
        missing = sorted(set(int(d) for d in depths) - set(int(d) for d in store.depths))
        if missing:
            raise UserError(f"--depths {missing} not in the store (it holds {[int(d) for d in store.depths]})")


def _rate(e: dict | None) -> str:
    if not e or e.get("rate") is None:
        return ""
    return f"{e['rate']:.2f} [{e['lo']:.2f}, {e['hi']:.2f}] ({e['k']}/{e['n']})"


def loso_lines(loso: dict) -> list[str]:
    """The leave-one-source-out table as text lines (empty when it does not apply)."""
    if not loso or not loso.get("rows"):
        return [f"leave-one-source-out: {loso.get('note', 'not run')}"] if loso else []
    lines = ["leave-one-source-out (probe and n-gram trained without the source; AUROC [95% CI] over pairs scored by "
             "the same fold model; per-answer rate at a threshold set on the other sources' own benign answers):"]
    for r in loso["rows"]:
        head = f"  {r['source']:<28s} {'/'.join(r['labels']):<15s} n={r['n_answers']:<5d}"
        if "skipped" in r:
            lines.append(f"{head} skipped: {r['skipped']}")
            continue
        cells = []
        for m in ("probe", "ngram"):
            e = r.get(m)
            if not e or e["auroc"] is None:
                continue
            a = e["auroc"]
            rate = "; ".join(f"{k.upper()} {_rate(e[k])}" for k in ("tpr", "fpr") if e.get(k))
            cells.append(f"{m} {a['value']:.3f} [{a['lo']:.3f}, {a['hi']:.3f}] {rate}")
        d = r.get("probe_minus_ngram")
        if d:
            cells.append(f"probe - n-gram {d['value']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]")
        lines.append(f"{head} " + " | ".join(cells))
    for m, a in (loso.get("macro") or {}).items():
        w = loso["worst_by_method"][m]
        lines.append(f"  {m}: macro mean over {a['n_sources']} sources {a['value']:.3f} [{a['lo']:.3f}, "
                     f"{a['hi']:.3f}]; worst {w['source']} {w['value']:.3f}")
    return lines


def _report(res: dict) -> None:
    for line in loso_lines(res.get("loso")):
        print(line)
    best = res["best_layer"]
    i = res["layers"].index(best)
    for m in res["methods"]:
        a = res["per_layer"][m][i]["auroc"]
        print(f"layer {best} {m:>10s}: AUROC {a['value']:.3f} [{a['lo']:.3f}, {a['hi']:.3f}]")
    th = res["best"].get("threshold")
    if th:
        print(f"threshold {th['threshold']:.4f} at target FPR {res['best']['target_fpr']} per answer on "
              f"{th['n_controls']} own benign answers (out-of-fold; the threshold was chosen on these same answers, so "
              f"the FPR is in-sample: `anydepth train` reports held-out rates): TPR {_rate(th['tpr'])}, "
              f"FPR {_rate(th['fpr'])}")
    d = res["best"].get("probe_minus_ngram_auroc")
    if d:
        print(f"probe − n-gram AUROC {d['value']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]: "
              + ("the probe beats the text baseline" if d["beats"] else
                 "no evidence that the probe beats the text baseline"))
