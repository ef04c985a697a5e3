# %% [markdown]
# # 1 · Layer sweep and probe training from an activation store
#
# **Question:** after the model has already written *d* tokens of a response, does re-reading its own chat-template
# header (the *Safety-Token* span, e.g. `<|im_end|>\n<|im_start|>assistant`) still tell harmful from benign
# requests — and at which layer, at which depth, and how much better than simple baselines?
#
# The data path, each step one package call:
# demo prompts → continuations (prefill attack on harmful prompts, the model's own answers on benign ones) →
# **packed extraction** (one forward per response reads the span at every depth and layer) → HDF5 store →
# grouped-CV layer × depth sweep with baselines → plots → a saved `ProbeSet` (safetensors + JSON).
#
# > **On the tiny model the numbers are meaningless.** By default this notebook runs on a random 4-layer model so that it executes in seconds (it is run in CI). Every number and plot below only shows that the pipeline works. For real results start Jupyter with `ANYDEPTH_NOTEBOOK_MODEL=qwen2.5-coder-0.5b-instruct` (the embedded default; any catalogue name, local folder or hub id works) — on a CPU that takes minutes (notebooks 1–2) to tens of minutes (notebook 3).

# %%
import os

from interp.notebook_utils import is_tiny, pick_model

MODEL = os.environ.get("ANYDEPTH_NOTEBOOK_MODEL", "tiny")
# "tiny": interp.testing.tiny_model("qwen2", n_layers=4), random weights (CI);
# anything else: interp.model.loading.load_model(MODEL), e.g. "qwen2.5-coder-0.5b-instruct"
loaded = pick_model(MODEL)
TINY = is_tiny(MODEL)
print(f"{loaded.model_id}: {loaded.n_layers} layers, d_model {loaded.d_model}, {loaded.dtype} on {loaded.device}")


# %%
import tempfile
from pathlib import Path

WORK = Path(tempfile.mkdtemp(prefix="anydepth-nb1-"))  # everything this notebook writes goes here
# sizes: the tiny configuration keeps CI fast; a real model gets more prompts and deeper responses
N_PAIRS, MAX_NEW_TOKENS, DEPTHS = (10, 24, "0:24:4") if TINY else (40, 64, "0:64:8")
print(WORK)

# %% [markdown]
# ## The Safety-Token span
#
# Derived from the chat template (no per-model table): the text the template puts after an assistant message
# followed by the assistant header. ADA-LP reads the probe at the role token (`probe_index`).

# %%
from interp.spans.derive import derive_safety_spans

spans = derive_safety_spans(loaded.tokenizer)
print("span text   :", repr(spans.span_text))
print("span ids    :", spans.span_ids)
print("probe token :", spans.probe_index, repr(spans.role_text))

# %% [markdown]
# ## Data and continuations
#
# A seeded subset of the built-in demo set: harmful requests, each with a topic-matched benign twin.
# `mode="auto"` forces the opener `"Sure, here is"` on harmful prompts and lets the model continue (a prefill
# attack); benign prompts get the model's own answer. (Watch the style confound: the forced opener alone could
# separate the classes — the `last_token` and `prompt` baselines below help to see it.)

# %%
from interp.generate.continuations import GenerateConfig, continuations_for, save_jsonl
from interp.notebook_utils import demo_pairs

records = demo_pairs(N_PAIRS, seed=0)
items = continuations_for(loaded.model, loaded.tokenizer, records,
                          GenerateConfig(mode="auto", max_new_tokens=MAX_NEW_TOKENS), progress=False)
save_jsonl(items, WORK / "continuations.jsonl")
for c in items[:4]:
    print(f"{c.label:>7} {c.kind:>7} {len(c.response_ids):3d} tok, ended turn: {c.finished!s:5} | {c.prompt[:60]}")
    print("        ", repr(c.response[:90]))

# %% [markdown]
# ## Packed extraction into an HDF5 store
#
# One forward per response: `prompt ‖ response ‖ span(d₁) ‖ … ‖ span(d_D)` with a tree attention mask, so each span
# copy sees exactly `prompt ‖ response[:d]`. Responses shorter than a depth are marked invalid (never duplicated).

# %%
from interp.extract.packed import extract_to_store, parse_depths

store_path = WORK / "store.h5"
result = extract_to_store(loaded.model, loaded.tokenizer, items, store_path, spans=spans,
                          depths=parse_depths(DEPTHS), layers=list(range(loaded.n_layers)),
                          hooks=("resid_post",), positions="span", storage_dtype="float16", batch_size=4,
                          provenance=loaded.provenance(), progress=False)
print(f"{result.n_examples} examples, {result.n_tokens} tokens in {result.seconds:.1f} s -> {result.path}")

# %%
from interp.extract.store import ActivationStore

with ActivationStore.open(store_path) as store:
    ex = store.examples
    X = store.read("resid_post", store.layers[-1], position="probe")  # reads one layer only
    print("hooks", store.hooks, "layers", store.layers, "depths", store.depths.tolist())
print("activations [N, D, d_model]:", X.shape, "| harmful rows:", int(ex["label"].sum()), "of", len(ex["label"]))
print("valid (row, depth) pairs:", int(ex["valid"].sum()), "of", ex["valid"].size)

# %% [markdown]
# ## Grouped-CV sweep with baselines
#
# Cross-validation groups rows by prompt (a prompt's depths are near-duplicates; splitting them would leak).
# Baselines on identical splits: the last generated token, the prompt alone (depth 0), difference of means, and a
# probe trained on prompt-shuffled labels (should sit near AUROC 0.5).

# %%
import interp as ad

sweep = ad.sweep(store_path, ad.SweepConfig(folds=5, n_boot=200))  # a SweepResult (typed; sweep.to_json() for JSON)
print("AUROC (out-of-fold) per layer:")
print("layer " + " ".join(f"{m:>11}" for m in sweep.methods))
for layer in sweep.layers:
    print(f"{layer:5d} " + " ".join(f"{sweep.auroc(m, layer)['value']:11.3f}" for m in sweep.methods))
print(sweep.summary())
for note in sweep.notes:
    print("note:", note)
res = sweep.to_json()

# %%
from interp.notebook_utils import show_png
from interp.probes.plots import plot_depth_curve, plot_layer_depth_heatmap, plot_layer_sweep

show_png(plot_layer_sweep(res, WORK / "layer_sweep"))
show_png(plot_layer_depth_heatmap(res, WORK / "layer_depth_auroc"))
show_png(plot_depth_curve(res, WORK / "depth_curve"))

# %% [markdown]
# ## Fit, save and reload a `ProbeSet`
#
# `ad.train` (the library call behind `anydepth train`) splits the prompt pairs into train / calibration / test, picks the layer by
# grouped-CV AUROC on the training prompts, fits the probes on them, sets the threshold per answer on the calibration
# prompts (for the guard's check schedule, `--stride`), reports held-out numbers on the test prompts beside an n-gram
# baseline, and writes `probeset.safetensors` + `probeset.json` (no pickle; the JSON records the split, so
# evaluations skip the prompts it was trained and calibrated on).
# The same files drive the guard (notebook 2) and the causal experiments (notebook 3).

# %%
probe_dir = WORK / "probes"
stride = int(DEPTHS.split(":")[2])  # calibrate the threshold for a guard that checks at the stored depth step
trained = ad.train(store_path, ad.TrainConfig(n_boot=100, stride=stride), out=probe_dir)
print(trained.summary())
print(sorted(p.name for p in probe_dir.iterdir()))

# %%
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
    print(f"{name:>7} mean score by depth:", np.round(mean, 3))

# %% [markdown]
# ## What next
#
# * `anydepth sweep --store … --out …` and `anydepth train` do the last two sections from the command line (JSON,
#   PNG + SVG plots, configs saved beside the results); `anydepth demo` runs the whole study with a report.
# * Check the per-source results (`res["best"]["per_source"]`) before trusting a high AUROC: style alone can
#   separate forced openers from the model's own voice.
