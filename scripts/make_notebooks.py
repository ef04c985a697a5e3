"""Write the tutorial notebooks in ``notebooks/`` (without outputs) from the cell texts below.

Run ``python scripts/make_notebooks.py`` after editing a cell here; never edit the ``.ipynb`` files by hand.
Cell ids are fixed so that regenerating an unchanged notebook gives identical bytes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"

MODEL_CELL = '''\
import os

from interp.notebook_utils import is_tiny, pick_model

MODEL = os.environ.get("ANYDEPTH_NOTEBOOK_MODEL", "tiny")
# "tiny": interp.testing.tiny_model("qwen2", n_layers=4), random weights (CI);
# anything else: interp.model.loading.load_model(MODEL), e.g. "qwen2.5-coder-0.5b-instruct"
loaded = pick_model(MODEL)
TINY = is_tiny(MODEL)
print(f"{loaded.model_id}: {loaded.n_layers} layers, d_model {loaded.d_model}, {loaded.dtype} on {loaded.device}")
'''

HONEST = ("> **On the tiny model the numbers are meaningless.** By default this notebook runs on a random 4-layer "
          "model so that it executes in seconds (it is run in CI). Every number and plot below only shows that the "
          "pipeline works. For real results start Jupyter with `ANYDEPTH_NOTEBOOK_MODEL=qwen2.5-coder-0.5b-instruct` "
          "(the embedded default; any catalogue name, local folder or hub id works) — on a CPU that takes minutes "
          "(notebooks 1–2) to tens of minutes (notebook 3).")

NB1 = [
    ("md", f"""\
# 1 · Layer sweep and probe training from an activation store

**Question:** after the model has already written *d* tokens of a response, does re-reading its own chat-template
header (the *Safety-Token* span, e.g. `<|im_end|>\\n<|im_start|>assistant`) still tell harmful from benign
requests — and at which layer, at which depth, and how much better than simple baselines?

The data path, each step one package call:
demo prompts → continuations (prefill attack on harmful prompts, the model's own answers on benign ones) →
**packed extraction** (one forward per response reads the span at every depth and layer) → HDF5 store →
grouped-CV layer × depth sweep with baselines → plots → a saved `ProbeSet` (safetensors + JSON).

{HONEST}"""),
    ("code", MODEL_CELL),
    ("code", '''\
import tempfile
from pathlib import Path

WORK = Path(tempfile.mkdtemp(prefix="anydepth-nb1-"))  # everything this notebook writes goes here
# sizes: the tiny configuration keeps CI fast; a real model gets more prompts and deeper responses
N_PAIRS, MAX_NEW_TOKENS, DEPTHS = (10, 24, "0:24:4") if TINY else (40, 64, "0:64:8")
print(WORK)'''),
    ("md", """\
## The Safety-Token span

Derived from the chat template (no per-model table): the text the template puts after an assistant message
followed by the assistant header. ADA-LP reads the probe at the role token (`probe_index`)."""),
    ("code", '''\
from interp.spans.derive import derive_safety_spans

spans = derive_safety_spans(loaded.tokenizer)
print("span text   :", repr(spans.span_text))
print("span ids    :", spans.span_ids)
print("probe token :", spans.probe_index, repr(spans.role_text))'''),
    ("md", """\
## Data and continuations

A seeded subset of the built-in demo set: harmful requests, each with a topic-matched benign twin.
`mode="auto"` forces the opener `"Sure, here is"` on harmful prompts and lets the model continue (a prefill
attack); benign prompts get the model's own answer. (Watch the style confound: the forced opener alone could
separate the classes — the `last_token` and `prompt` baselines below help to see it.)"""),
    ("code", '''\
from interp.generate.continuations import GenerateConfig, continuations_for, save_jsonl
from interp.notebook_utils import demo_pairs

records = demo_pairs(N_PAIRS, seed=0)
items = continuations_for(loaded.model, loaded.tokenizer, records,
                          GenerateConfig(mode="auto", max_new_tokens=MAX_NEW_TOKENS), progress=False)
save_jsonl(items, WORK / "continuations.jsonl")
for c in items[:4]:
    print(f"{c.label:>7} {c.kind:>7} {len(c.response_ids):3d} tok, ended turn: {c.finished!s:5} | {c.prompt[:60]}")
    print("        ", repr(c.response[:90]))'''),
    ("md", """\
## Packed extraction into an HDF5 store

One forward per response: `prompt ‖ response ‖ span(d₁) ‖ … ‖ span(d_D)` with a tree attention mask, so each span
copy sees exactly `prompt ‖ response[:d]`. Responses shorter than a depth are marked invalid (never duplicated)."""),
    ("code", '''\
from interp.extract.packed import extract_to_store, parse_depths

store_path = WORK / "store.h5"
result = extract_to_store(loaded.model, loaded.tokenizer, items, store_path, spans=spans,
                          depths=parse_depths(DEPTHS), layers=list(range(loaded.n_layers)),
                          hooks=("resid_post",), positions="span", storage_dtype="float16", batch_size=4,
                          provenance=loaded.provenance(), progress=False)
print(f"{result.n_examples} examples, {result.n_tokens} tokens in {result.seconds:.1f} s -> {result.path}")'''),
    ("code", '''\
from interp.extract.store import ActivationStore

with ActivationStore.open(store_path) as store:
    ex = store.examples
    X = store.read("resid_post", store.layers[-1], position="probe")  # reads one layer only
    print("hooks", store.hooks, "layers", store.layers, "depths", store.depths.tolist())
print("activations [N, D, d_model]:", X.shape, "| harmful rows:", int(ex["label"].sum()), "of", len(ex["label"]))
print("valid (row, depth) pairs:", int(ex["valid"].sum()), "of", ex["valid"].size)'''),
    ("md", """\
## Grouped-CV sweep with baselines

Cross-validation groups rows by prompt (a prompt's depths are near-duplicates; splitting them would leak).
Baselines on identical splits: the last generated token, the prompt alone (depth 0), difference of means, and a
probe trained on prompt-shuffled labels (should sit near AUROC 0.5)."""),
    ("code", '''\
from interp.probes import load_layer
from interp.probes.sweep import ProbeConfig, SweepConfig, run_sweep

store = ActivationStore.open(store_path)
layers = list(store.layers)
res = run_sweep(lambda layer, position: load_layer(store, "resid_post", layer, position), layers,
                ProbeConfig(), SweepConfig(layers=layers, folds=5, n_boot=200))
store.close()

print("AUROC (out-of-fold) per layer:")
print("layer " + " ".join(f"{m:>11}" for m in res["methods"]))
for i, layer in enumerate(res["layers"]):
    print(f"{layer:5d} " + " ".join(f"{res['per_layer'][m][i]['auroc']['value']:11.3f}" for m in res["methods"]))
a = res["per_layer"]["probe"][layers.index(res["best_layer"])]["auroc"]
print(f"best layer {res['best_layer']}: AUROC {a['value']:.3f} [{a['lo']:.3f}, {a['hi']:.3f}] (95% CI by prompt)")
for note in res["notes"]:
    print("note:", note)'''),
    ("code", '''\
from interp.notebook_utils import show_png
from interp.probes.plots import plot_depth_curve, plot_layer_depth_heatmap, plot_layer_sweep

show_png(plot_layer_sweep(res, WORK / "layer_sweep"))
show_png(plot_layer_depth_heatmap(res, WORK / "layer_depth_auroc"))
show_png(plot_depth_curve(res, WORK / "depth_curve"))'''),
    ("md", """\
## Fit, save and reload a `ProbeSet`

`anydepth train` (run here in-process) splits the prompt pairs into train / calibration / test, picks the layer by
grouped-CV AUROC on the training prompts, fits the probes on them, sets the threshold per answer on the calibration
prompts (for the guard's check schedule, `--stride`), reports held-out numbers on the test prompts beside an n-gram
baseline, and writes `probeset.safetensors` + `probeset.json` (no pickle; the JSON records the split, so
evaluations skip the prompts it was trained and calibrated on).
The same files drive the guard (notebook 2) and the causal experiments (notebook 3)."""),
    ("code", '''\
from interp.cli.main import main as anydepth

probe_dir = WORK / "probes"
stride = DEPTHS.split(":")[2]  # calibrate the threshold for a guard that checks at the stored depth step
assert anydepth(["train", "--store", str(store_path), "--out", str(probe_dir), "--n-boot", "100",
                 "--stride", stride]) == 0
print(sorted(p.name for p in probe_dir.iterdir()))'''),
    ("code", '''\
import numpy as np

from interp.probes import ProbeSet

probes = ProbeSet.load(probe_dir, expect_provenance=loaded.provenance())  # refuses another model / template
print(f"{probes.kind} probes on {probes.hook} for layers {probes.layers}; best layer {probes.best_layer}, "
      f"threshold {probes.threshold:.3f}")

with ActivationStore.open(store_path) as store:
    X = store.read(probes.hook, probes.best_layer, position="probe")
    ex = store.examples
scores = probes.score(X)  # [N, D] probability harmful (in-sample: the probe saw these rows)
valid, y = ex["valid"], ex["label"]
same = np.allclose(probes.to_sklearn().predict_proba(X[valid])[:, 1], scores[valid], atol=1e-6)
print("equals its scikit-learn twin:", same)
for label, name in ((1, "harmful"), (0, "benign")):
    mean = [float(scores[(y == label) & valid[:, k], k].mean()) for k in range(valid.shape[1])]
    print(f"{name:>7} mean score by depth:", np.round(mean, 3))'''),
    ("md", """\
## What next

* `anydepth sweep --store … --out …` and `anydepth train` do the last two sections from the command line (JSON,
  PNG + SVG plots, configs saved beside the results); `anydepth demo` runs the whole study with a report.
* Check the per-source results (`res["best"]["per_source"]`) before trusting a high AUROC: style alone can
  separate forced openers from the model's own voice."""),
]

NB2 = [
    ("md", f"""\
# 2 · The guard in action on a deep prefill

**Question:** a prefill attack forces the model to start complying (`"Sure, here is …"`), and after enough forced
tokens a small model stops refusing. Can a guard that periodically re-reads the Safety-Token span still catch it,
and where does it halt?

* **ADA-LP**: every `stride` tokens, forward the probe span over the live KV cache, read the probe layer at the role
  token, score it with a linear `ProbeSet`, roll the cache back; halt when the score exceeds the threshold.
* **ADA-RK**: re-inject the whole span, greedily decode a few tokens and halt if they read as a refusal.
* **Unguarded**: the same forced prefix, no checks.

The probe set is trained inline on a small store (notebook 1 explains each step) so that this notebook runs on
its own.

{HONEST}"""),
    ("code", MODEL_CELL),
    ("code", '''\
import tempfile
from pathlib import Path

from interp.notebook_utils import demo_pairs, quick_probeset
from interp.spans.derive import derive_safety_spans

WORK = Path(tempfile.mkdtemp(prefix="anydepth-nb2-"))
N_PAIRS, MAX_NEW_TOKENS, DEPTHS = (10, 24, "0:24:4") if TINY else (30, 64, "0:64:8")  # other pairs held out
FORCED, STRIDE, LOOKAHEAD, GEN_TOKENS = (16, 4, 8, 32) if TINY else (40, 8, 12, 96)

spans = derive_safety_spans(loaded.tokenizer)
probes, items, store_path = quick_probeset(loaded, WORK, demo_pairs(N_PAIRS, seed=0),
                                           max_new_tokens=MAX_NEW_TOKENS, depths=DEPTHS)
print(f"probe layer {probes.best_layer}, threshold {probes.threshold:.3f}, "
      f"CV AUROC {probes.metrics['cv_train'][str(probes.best_layer)]['auroc']['value']:.3f}")'''),
    ("md", """\
## A harmful prompt with a deep prefill

A held-out harmful demo prompt (its topic pair was not used for training). The forced continuation is the
opener plus the model's own prefill-attack continuation, `FORCED` tokens in all; after that the model goes on by
itself."""),
    ("code", '''\
from interp.generate.continuations import generate_continuations
from interp.data import load_dataset
from interp.spans.derive import format_prompt_ids

trained = {c.prompt for c in items}
harmful = next(r for r in load_dataset("demo") if r.label == "harmful" and r.prompt not in trained)
benign = next(r for r in load_dataset("demo") if r.label == "benign" and r.prompt not in trained)
attack = generate_continuations(loaded.model, loaded.tokenizer, [harmful], mode="prefill",
                                max_new_tokens=FORCED, progress=False)[0]
forced = attack.response_ids[:FORCED]
prompt_ids = format_prompt_ids(loaded.tokenizer, harmful.prompt)
print("prompt :", harmful.prompt)
print(f"forced ({len(forced)} tokens):", repr(loaded.tokenizer.decode(forced)))'''),
    ("md", """\
## ADA-LP, ADA-RK and no guard, side by side

Same prompt, same forced prefix, greedy decoding. ADA-LP runs twice: with the probe set's threshold (set at 1%
false positives on held-out benign scores) and with ADA's fixed 0.5. With `buffer=True` (the default) no token
reaches the caller before a check covering it has passed, so a halt leaks nothing; the forced tokens count as
generated (the attacker wrote them), and a halt replaces the rest with a refusal message."""),
    ("code", '''\
from interp.guard.generator import GuardedGenerator
from interp.guard.types import GuardConfig


def run_guard(mode, **options):
    cfg = GuardConfig(mode=mode, stride=STRIDE, lookahead=LOOKAHEAD, max_new_tokens=GEN_TOKENS, **options)
    gen = GuardedGenerator(loaded.model, loaded.tokenizer, spans, cfg, probes if mode == "lp" else None,
                           model_id=loaded.model_id, weights_sha256=loaded.weights_sha256)
    try:
        return gen.generate([prompt_ids], forced=[forced])[0]
    finally:
        gen.close()


runs = {"ADA-LP": run_guard("lp"),  # threshold: the probe set's (1% FPR on held-out benign scores)
        "ADA-LP @0.5": run_guard("lp", threshold=0.5),  # ADA's own threshold
        "ADA-RK": run_guard("rk"),
        "unguarded": run_guard("none")}
for name, r in runs.items():
    where = f"HALTED at depth {r.halt_depth}" if r.halted else f"ran to the end ({r.stop_reason})"
    print(f"--- {name}: {where}; {len(r.generated_ids)} tokens generated, {len(r.emitted_ids)} emitted")
    print("    the caller sees:", repr(r.text[:240]))'''),
    ("code", '''\
print(f"{'guard':>12} {'depth':>5} {'flagged':>7} {'score':>6}  lookahead (ADA-RK)")
for name, r in runs.items():
    for e in r.checks:
        score = "" if e.score is None else f"{e.score:.3f}"
        print(f"{name:>12} {e.depth:5d} {e.flagged!s:>7} {score:>6}  {(e.lookahead or '')[:40]!r}")'''),
    ("md", """\
## Probe score vs depth

The same ADA-LP check at every token (`stride=1`) with halting switched off, for the harmful prompt under the
deep prefill and for a benign prompt answered freely. Horizontal lines: the two thresholds; vertical lines: where
the strided ADA-LP runs above halted; shaded: the forced prefix."""),
    ("code", '''\
import matplotlib.pyplot as plt

from interp.notebook_utils import show

cfg = GuardConfig(mode="lp", stride=1, check_at_start=True, max_new_tokens=GEN_TOKENS)
gen = GuardedGenerator(loaded.model, loaded.tokenizer, spans, cfg, probes, model_id=loaded.model_id,
                       weights_sha256=loaded.weights_sha256, halt=False)
traces = gen.generate([prompt_ids, format_prompt_ids(loaded.tokenizer, benign.prompt)], forced=[forced, []])
gen.close()

fig, ax = plt.subplots(figsize=(7, 3.5))
for r, name, color in zip(traces, ("harmful + deep prefill", "benign, own answer"), ("C3", "C0")):
    ax.plot([e.depth for e in r.checks], [e.score for e in r.checks], color=color, label=name)
ax.axvspan(0, len(forced), color="grey", alpha=0.15, label="forced prefix")
ax.axhline(probes.threshold, color="k", ls="--", lw=1, label=f"threshold {probes.threshold:.2f} (1% FPR)")
ax.axhline(0.5, color="k", ls=":", lw=1, label="threshold 0.5 (ADA)")
for (name, r), color in zip(runs.items(), ("C2", "C1")):
    if r.halted:
        ax.axvline(r.halt_depth, color=color, lw=1.5, label=f"{name} halted (stride {STRIDE})")
ax.set(xlabel="depth (response tokens)", ylabel="probe score P(harmful)", ylim=(-0.02, 1.02),
       title=f"ADA-LP score at layer {probes.best_layer} ({loaded.model_id})")
ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
show(fig)'''),
    ("md", """\
## What next

* `anydepth guard --prompt … --probes DIR` streams one guarded reply in the terminal; `anydepth serve` offers
  the guard behind an OpenAI-compatible API (a final assistant message is a prefill).
* `anydepth evaluate deep-prefill` measures refusal vs depth for base / ADA-RK / ADA-LP with confidence intervals,
  `evaluate over-refusal` the price on benign prompts, `evaluate cost` the slowdown."""),
]

NB3 = [
    ("md", f"""\
# 3 · Causal analysis at the Safety-Token span

**Question:** is the harmful/benign signal read at the re-injected span *used* by the model, or merely decodable?

1. **Activation patching** (layers × depths): run a harmful prefix, but paste the span's residual stream from the
   paired benign run at one layer (and vice versa); how much does the refusal log-odds move?
2. **Direction ablation**: project the probe / difference-of-means direction out of the span's residual stream at
   every edited layer, against random directions as controls.
3. **Transcoder features**: train a small MLP transcoder (sae-lens format), rank its features by how differently
   they fire after harmful vs benign prefixes, and ablate the top-k at the span (against random k-sets).

Effects are refusal log-odds (probability mass of refusal openers at the span's last position) with 95% CIs over
prompts.

{HONEST}"""),
    ("code", MODEL_CELL),
    ("code", '''\
import tempfile
from pathlib import Path

from interp.causal.experiment import ProbeAdapter
from interp.causal.inputs import Example
from interp.causal.metrics import opener_tokens
from interp.notebook_utils import demo_pairs, quick_probeset
from interp.spans.derive import derive_safety_spans

WORK = Path(tempfile.mkdtemp(prefix="anydepth-nb3-"))
# real models: every forward below runs over all examples, so keep the set small on a CPU (tens of minutes)
N_PAIRS, MAX_NEW_TOKENS, DEPTHS = (8, 24, (0, 8, 16)) if TINY else (12, 32, (0, 16, 32))
N_RANDOM, TC_STEPS = (8, 150) if TINY else (10, 500)

spans = derive_safety_spans(loaded.tokenizer)
probes, items, _ = quick_probeset(loaded, WORK, demo_pairs(N_PAIRS, seed=0), max_new_tokens=MAX_NEW_TOKENS,
                                  depths=",".join(map(str, DEPTHS)))
probe = ProbeAdapter(probes)  # the probe set as the causal code sees it (logits, directions, hook site)

# glue: the causal code takes plain (prompt ids, response ids) examples and the span ids
span = spans
examples = [Example(c.id, c.label, tuple(c.prompt_ids), tuple(c.response_ids), c.source) for c in items]
tok = loaded.tokenizer
pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
openers = opener_tokens(tok)
layers = list(range(0, loaded.n_layers, max(1, loaded.n_layers // 8)))  # layers to patch / edit
print(f"{len(examples)} examples; probe layer {probe.best_layer}; depths {DEPTHS}")'''),
    ("md", """\
## 1 · Patching heatmap

`harmful<-benign`: the harmful run receives the benign run's span activations (negative Δ = less refusal);
`benign<-harmful`: the reverse. Pairs are formed per depth from examples long enough for it."""),
    ("code", '''\
import numpy as np

from interp.causal import plots
from interp.causal.patching import heatmap_matrix, patching_sweep

patch = patching_sweep(loaded.model, examples, span, pad_id, openers, DEPTHS, layers, where="span",
                       probe=probe, probe_layers=[probe.best_layer], probe_site=probe.site)
print("pairs per depth:", dict(zip(patch["depths"], patch["n_pairs"])))
for direction in ("harmful<-benign", "benign<-harmful"):
    print(direction, "mean Δ refusal log-odds [layer x depth]:")
    print(np.round(heatmap_matrix(patch, direction), 3))'''),
    ("code", '''\
from interp.notebook_utils import show_png

show_png(plots.patch_heatmaps(patch, WORK / "patch_heatmap.png"))
show_png(plots.patch_heatmaps(patch, WORK / "patch_heatmap_probe.png", f"d_probe_{probe.best_layer}"))'''),
    ("md", """\
## 2 · Direction ablation vs random controls

Two directions at the probe layer: the probe's weight vector and the difference of class means at the probe
token. Each is projected out of the span positions at every layer in `layers` (the block inputs); grey dots are
the same edit with random unit directions."""),
    ("code", '''\
from interp.causal.directions import diff_of_means, direction_effects

directions = {"probe": probe.direction(probe.best_layer),
              "diff_of_means": diff_of_means(loaded.model, examples, span, pad_id, openers, DEPTHS,
                                             probe.best_layer, probe.site)}
ablation = direction_effects(loaded.model, examples, span, pad_id, openers, directions, DEPTHS, layers,
                             mode="ablate", n_random=N_RANDOM, where="span")
for r in ablation["rows"]:
    ci = r["real"]
    print(f"{r['direction']:>13} {r['label']:>7} d={r['depth']:>2}: Δ refusal {ci['mean']:+.3f} "
          f"[{ci['lo']:+.3f}, {ci['hi']:+.3f}]  random {r['random_q025']:+.3f}..{r['random_q975']:+.3f}  "
          f"p={r['p_vs_random']:.2f}")
show_png(plots.controls_plot(ablation["rows"], WORK / "directions.png", "direction ablation"))'''),
    ("md", """\
## 3 · A tiny transcoder and a top-k feature-ablation curve

`anydepth transcoders train` in Python: collect the MLP input/output at one layer over `prompt ‖ response ‖ span`
rows of our continuations, train with our loop (sae-lens has no transcoder trainer), evaluate (FVU, L0, spliced
next-token loss) and save in sae-lens format."""),
    ("code", '''\
from interp.causal.transcoders import TranscoderTrainConfig, load_transcoder
from interp.cli.commands.transcoders import TranscoderDataConfig, train_layers

TC_LAYER = probe.best_layer
summary = train_layers(loaded, TranscoderDataConfig(layers=(TC_LAYER,), continuations=str(WORK / "continuations.jsonl"),
                                                    root=str(WORK / "transcoders")),
                       TranscoderTrainConfig(steps=TC_STEPS, expansion=4, batch_tokens=256))
tc = load_transcoder(summary[0]["path"])
print(f"d_sae {tc.cfg.d_sae}; FVU {summary[0]['fvu']:.3f}, L0 {summary[0]['l0']:.1f}")'''),
    ("code", '''\
import torch

from interp.causal.features import rank_features, span_features, topk_ablation

acts = span_features(loaded.model, tc, TC_LAYER, examples, span, pad_id, DEPTHS, where="span")
ranked = rank_features(acts["harmful"], acts["benign"], top=20)
for r in ranked[:5]:
    print(f"feature {r['feature']:4d}: Cohen's d {r['d']:+.2f} [{r['lo']:+.2f}, {r['hi']:+.2f}], "
          f"fires on {r['freq_harmful']:.0%} harmful / {r['freq_benign']:.0%} benign")

order = [r["feature"] for r in ranked if r["d"] > 0]  # features firing more after harmful prefixes
all_acts = torch.cat([acts["harmful"], acts["benign"]])
candidates = torch.nonzero((all_acts > 0).any(0)).flatten().tolist() or None  # random sets: live features
ks = [k for k in (0, 1, 2, 5, 10) if k <= len(order)]
topk = topk_ablation(loaded.model, tc, TC_LAYER, examples, span, pad_id, openers, DEPTHS, order, ks,
                     mode="zero", n_random=N_RANDOM, candidates=candidates, probe=probe,
                     probe_layers=[probe.best_layer], probe_site=probe.site)
show_png(plots.topk_plot(topk, WORK / "features_topk.png"))'''),
    ("md", """\
## What next

`anydepth patch`, `anydepth ablate --kind directions|features` and `anydepth transcoders train|evaluate|list` run
the same experiments from the command line with JSON results and configs saved beside the plots. On a real model
look for effects that clear the random controls at some (layer, depth) and hold across depths — single prompts
are anecdotes."""),
]


def build(cells: list[tuple[str, str]], tag: str) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, (kind, source) in enumerate(cells):
        cell = new_markdown_cell(source) if kind == "md" else new_code_cell(source)
        cell["id"] = f"{tag}-{i:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def main() -> int:
    NOTEBOOKS.mkdir(exist_ok=True)
    for name, cells in (("01_layer_sweep_and_probes", NB1), ("02_guard_deep_prefill", NB2),
                        ("03_causal_analysis", NB3)):
        path = NOTEBOOKS / f"{name}.ipynb"
        tmp = path.with_suffix(".ipynb.tmp")
        nbformat.write(build(cells, name[:2]), str(tmp))
        tmp.replace(path)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
