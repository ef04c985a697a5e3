# %% [markdown]
# # 3 · Causal analysis at the Safety-Token span
#
# **Question:** is the harmful/benign signal read at the re-injected span *used* by the model, or merely decodable?
#
# 1. **Activation patching** (layers × depths): run a harmful prefix, but paste the span's residual stream from the
#    paired benign run at one layer (and vice versa); how much does the refusal log-odds move?
# 2. **Direction ablation**: project the probe / difference-of-means direction out of the span's residual stream at
#    every edited layer, against random directions as controls.
# 3. **Transcoder features**: train a small MLP transcoder (sae-lens format), rank its features by how differently
#    they fire after harmful vs benign prefixes, and ablate the top-k at the span (against random k-sets).
#
# Effects are refusal log-odds (the probability that the reply after the span begins with a refusal opener against a
# compliance opener, whole openers teacher-forced) with 95% CIs over prompt groups.
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
print(f"{len(examples)} examples; probe layer {probe.best_layer}; depths {DEPTHS}")

# %% [markdown]
# ## 1 · Patching heatmap
#
# `harmful<-benign`: the harmful run receives the benign run's span activations (negative Δ = less refusal);
# `benign<-harmful`: the reverse. Pairs are formed per depth from examples long enough for it.

# %%
import numpy as np

from interp.causal import plots
from interp.causal.patching import heatmap_matrix, patching_sweep

patch = patching_sweep(loaded.model, examples, span, pad_id, openers, depths=DEPTHS, layers=layers, where="span",
                       probe=probe, probe_layers=[probe.best_layer], probe_site=probe.site)
print("pairs per depth:", dict(zip(patch["depths"], patch["n_pairs"])))
for direction in ("harmful<-benign", "benign<-harmful"):
    print(direction, "mean Δ refusal log-odds [layer x depth]:")
    print(np.round(heatmap_matrix(patch, direction), 3))

# %%
from interp.notebook_utils import show_png

show_png(plots.patch_heatmaps(patch, WORK / "patch_heatmap.png"))
show_png(plots.patch_heatmaps(patch, WORK / "patch_heatmap_probe.png", f"d_probe_{probe.best_layer}"))

# %% [markdown]
# ## 2 · Direction ablation vs random controls
#
# Two directions at the probe layer: the probe's weight vector and the difference of class means at the probe
# token. Each is projected out of the span positions at every layer in `layers` (the block inputs); grey dots are
# the same edit with random unit directions.

# %%
from interp.causal.directions import diff_of_means, direction_effects

directions = {"probe": probe.direction(probe.best_layer),
              "diff_of_means": diff_of_means(loaded.model, examples, span, pad_id, openers, depths=DEPTHS,
                                             layer=probe.best_layer, site=probe.site)}
ablation = direction_effects(loaded.model, examples, span, pad_id, openers, directions=directions, depths=DEPTHS,
                             layers=layers, mode="ablate", n_random=N_RANDOM, where="span")
for r in ablation["rows"]:
    ci = r["real"]
    print(f"{r['direction']:>13} {r['label']:>7} d={r['depth']:>2}: Δ refusal {ci['mean']:+.3f} "
          f"[{ci['lo']:+.3f}, {ci['hi']:+.3f}]  random {r['random_q025']:+.3f}..{r['random_q975']:+.3f}  "
          f"p={r['p_vs_random']:.2f}")
show_png(plots.controls_plot(ablation["rows"], WORK / "directions.png", "direction ablation"))

# %% [markdown]
# ## 3 · A tiny transcoder and a top-k feature-ablation curve
#
# `ad.train_transcoders` (the library call behind `anydepth transcoders train`): collect the MLP input/output at
# one layer over `prompt ‖ response ‖ span` rows of our continuations, train with our loop (sae-lens has no transcoder trainer), evaluate (FVU, L0, spliced
# next-token loss) and save in sae-lens format.

# %%
import interp as ad
from interp.causal.transcoders import load_transcoder

TC_LAYER = probe.best_layer
trained = ad.train_transcoders(loaded, ad.TranscoderDataConfig(layers=(TC_LAYER,), root=str(WORK / "transcoders"),
                                                               continuations=str(WORK / "continuations.jsonl")),
                               ad.TranscoderTrainConfig(steps=TC_STEPS, expansion=4, batch_tokens=256))
print(trained.summary())
tc = load_transcoder(trained.layers[0]["path"])
print(f"d_sae {tc.cfg.d_sae}")

# %%
import torch

from interp.causal.features import rank_features, span_features, topk_ablation

acts = span_features(loaded.model, tc, TC_LAYER, examples, span, pad_id, depths=DEPTHS, where="span")
ranked = rank_features(acts["harmful"], acts["benign"], top=20)
for r in ranked[:5]:
    print(f"feature {r['feature']:4d}: Cohen's d {r['d']:+.2f} [{r['lo']:+.2f}, {r['hi']:+.2f}], "
          f"fires on {r['freq_harmful']:.0%} harmful / {r['freq_benign']:.0%} benign")

order = [r["feature"] for r in ranked if r["d"] > 0]  # features firing more after harmful prefixes
all_acts = torch.cat([acts["harmful"], acts["benign"]])
candidates = torch.nonzero((all_acts > 0).any(0)).flatten().tolist() or None  # random sets: live features
ks = [k for k in (0, 1, 2, 5, 10) if k <= len(order)]
topk = topk_ablation(loaded.model, tc, TC_LAYER, examples, span, pad_id, openers, depths=DEPTHS, ranked=order, ks=ks,
                     mode="zero", n_random=N_RANDOM, candidates=candidates, probe=probe,
                     probe_layers=[probe.best_layer], probe_site=probe.site)
show_png(plots.topk_plot(topk, WORK / "features_topk.png"))

# %% [markdown]
# ## What next
#
# `anydepth patch`, `anydepth ablate --kind directions|features` and `anydepth transcoders train|evaluate|list` run
# the same experiments from the command line with JSON results and configs saved beside the plots. On a real model
# look for effects that clear the random controls at some (layer, depth) and hold across depths — single prompts
# are anecdotes.
