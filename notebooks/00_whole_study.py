# %% [markdown]
# # 0 · The whole study from Python
#
# **Question:** does a linear probe on the re-injected assistant header (the *Safety-Token* span) tell harmful from
# benign continuations at every depth, on prompts it never saw, better than a text classifier, and does the guard
# built on it catch deep prefills at a per-answer false-alarm rate a deployer can accept?
#
# This notebook runs the whole study through the top-level API alone (`import interp as ad`), the same calls
# `anydepth demo` makes, then reads the typed results: continuations → packed extraction → layer × depth sweep with
# baselines and leave-one-source-out → the held-out probe set and its per-answer threshold → deep-prefill and
# over-refusal evaluations on held-out prompts → the targets with their verdicts and a Markdown report.
#
# > **On the tiny model the numbers are meaningless.** By default this notebook runs on a random 2-layer model so
# > that it executes in seconds (it is run in CI). For real results start Jupyter with
# > `ANYDEPTH_NOTEBOOK_MODEL=qwen2.5-coder-0.5b-instruct`: that runs the `demo` preset (about 17 minutes on 2 CPU
# > cores with bf16; see the README's "The demo").

# %%
import os
import tempfile
from pathlib import Path

import interp as ad
from interp.notebook_utils import is_tiny, tiny_model_dir

MODEL = os.environ.get("ANYDEPTH_NOTEBOOK_MODEL", "tiny")
TINY = is_tiny(MODEL)
WORK = Path(tempfile.mkdtemp(prefix="anydepth-nb0-"))  # everything this notebook writes goes here
# the tiny model is saved as a folder: every stage loads the model by name, as the CLI does
model = str(tiny_model_dir(WORK)) if TINY else MODEL
print(model, "->", WORK)

# %% [markdown]
# ## 1 · Configure and run
#
# `StudyConfig` holds every option of `anydepth demo`; the options left unset take the preset's value (`demo`: the
# corpus recipe at CPU size; `study`: the full recipe). The tiny configuration uses the built-in twin set
# (`spec="none"`) and very short answers. Each stage runs in a folder named by a hash of its configuration, so running
# this cell again reuses every finished stage.

# %%
TINY_SIZE = dict(spec="none", limit=40, max_new_tokens=12, depths="0:12:4", eval_depths=(0, 4, 12), eval_limit=3,
                 over_refusal_limit=3, lookahead=3, batch_size=6, dtype="float32",
                 evaluations=("deep-prefill", "over-refusal"))
cfg = ad.StudyConfig(model=model, out=str(WORK / "runs"), **(TINY_SIZE if TINY else {}))
study = ad.run_study(cfg)  # a StudyResult; study.root holds report.md and results.json
print(study.summary())

# %% [markdown]
# ## 2 · The targets and their verdicts
#
# Computed in the library (`interp.study.targets`), per depth from 25 on (the tiny run stops at depth 12, so its
# table is empty): leave-one-source-out AUROC of the probe and of the n-gram baseline, the held-out test AUROC, and
# ADA-LP's TPR per check at the frozen per-answer threshold.

# %%
t = study.targets
print("per-answer FPR on held-out benign answers:", t["fpr"] and t["fpr"]["rate"], "target", t["target_fpr"])
print("per-answer TPR on held-out harmful answers:", t["tpr_per_answer"] and t["tpr_per_answer"]["rate"])
for depth, row in t["depths"].items():
    print(depth, {k: v.get("value", v.get("rate")) for k, v in row.items() if isinstance(v, dict) and "lo" in v})

# %% [markdown]
# ## 3 · Each stage's typed result
#
# The sweep (`SweepResult`), the probe set (`ProbeSet`, its held-out numbers in `metrics["test"]`) and the
# evaluations' JSON, read back from the run folder.

# %%
sweep = study.load_sweep()
print(sweep.summary())
probes = study.load_probes()
print(probes.summary())

# %%
from interp.notebook_utils import show_png

show_png(study.path(study.sweep) / "layer_depth_auroc.png")
show_png(study.path(study.evaluations["deep-prefill"]) / "deep_prefill.png")

# %%
deep = study.load_evaluation("deep-prefill")
for detector, points in deep["curves"].items():
    print(f"{detector:>9}: " + ", ".join(f"depth {p['depth']} {p['rate']:.2f}" for p in points))
over = study.load_evaluation("over-refusal")
print("over-refusal (fires on benign prompts):", {k: round(v["rate"], 2) for k, v in over["rates"]["all"].items()})

# %% [markdown]
# ## What next
#
# * `study.root / "report.md"` is the full report (the same one `anydepth demo` writes); `results.json` is
#   `study.to_json()`, and `ad.StudyResult.load(folder)` reads it back.
# * Each stage is also a function of its own: `ad.make_continuations`, `ad.build_corpus`, `ad.extract_activations`,
#   `ad.sweep`, `ad.train`, `ad.evaluate_deep_prefill`, `ad.evaluate_over_refusal`, `ad.patch`,
#   `ad.ablate_directions`, `ad.train_transcoders`, `ad.feature_study` (notebooks 1–3 walk through them).
