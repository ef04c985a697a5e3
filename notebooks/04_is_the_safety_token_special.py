# %% [markdown]
# # 4 · Is the Safety Token special? Read positions and prompt-controlled contrasts
#
# **Question:** ADA reads harmfulness at the assistant header re-injected after *d* response tokens. Does that
# position carry more than the prompt, the last generated token, or any other span injected the same way?
#
# The data path: a paired corpus (each prompt answered twice: after a forced opener and on its own) →
# **packed extraction with controls** (the user header, a newline run and random tokens injected like the header,
# the mean over the response, the last instruction token) → `anydepth positions`: one probe per position on the
# same grouped folds, header − position with CIs, leave-one-source-out, AUROCs *within* prompts, a verdict.
#
# > **On the tiny model the numbers are meaningless** (a random model never refuses, so the within-harmful
# > contrast cannot even be measured). For real results start Jupyter with
# > `ANYDEPTH_NOTEBOOK_MODEL=qwen2.5-coder-0.5b-instruct`; the README's numbers come from the shipped spec
# > `positions` (`anydepth corpus --spec positions`) on three models.

# %%
import os

from interp.notebook_utils import is_tiny, pick_model

MODEL = os.environ.get("ANYDEPTH_NOTEBOOK_MODEL", "tiny")
loaded = pick_model(MODEL)
TINY = is_tiny(MODEL)
print(f"{loaded.model_id}: {loaded.n_layers} layers, d_model {loaded.d_model}")

# %%
import tempfile
from pathlib import Path

WORK = Path(tempfile.mkdtemp(prefix="anydepth-nb4-"))
N_PROMPTS, MAX_NEW_TOKENS, DEPTHS = (10, 24, "0,4,8,16,end") if TINY else (20, 64, "0,8,16,32,end")
print(WORK)

# %% [markdown]
# ## A paired corpus
#
# The same prompts twice: harmful prompts after a forced "Sure, here is" (harmful) and on their own, kept only
# when the refusal judge says the model declined (benign); benign prompts on their own and after the same opener.
# Within one prompt a feature of the prompt alone cannot tell the two answers apart.

# %%
import json

import interp as ad

opener = ["Sure, here is"]
spec = {"name": "positions-notebook", "seed": 0, "max_new_tokens": MAX_NEW_TOKENS, "entries": [
    {"source": "demo", "kind": "prefill", "label": "harmful", "count": N_PROMPTS, "openers": opener},
    {"source": "demo", "kind": "refusal", "label": "benign", "count": N_PROMPTS},
    {"source": "demo", "kind": "own", "label": "benign", "count": N_PROMPTS},
    {"source": "demo", "kind": "prefill", "label": "benign", "count": N_PROMPTS, "openers": opener}]}
(WORK / "spec.json").write_text(json.dumps(spec))
corpus = ad.build_corpus(loaded, ad.CorpusConfig(spec=str(WORK / "spec.json"), out=str(WORK / "corpus"),
                                                 gen_batch_size=16), progress=False)
print(corpus.summary())

# %% [markdown]
# ## Extraction with the controls
#
# `controls=` adds, in the same packed forward, each control span after every depth the header is injected at
# (masked the same way, so it has seen exactly as much of the answer), the mean over the response so far and the
# last instruction token.

# %%
from interp.extract.packed import extract_to_store, parse_depths
from interp.generate.continuations import load_jsonl
from interp.spans.controls import derive_controls
from interp.spans.derive import derive_safety_spans

spans = derive_safety_spans(loaded.tokenizer)
controls = derive_controls(loaded.tokenizer, spans)
for name in controls.names:
    ids = controls.spans[name]
    print(f"{name:12s} {loaded.tokenizer.decode(list(ids))!r}, read at {controls.read_index(name)}")
items = load_jsonl(corpus.path / "continuations.jsonl")
layers = sorted({loaded.n_layers // 2, loaded.n_layers - 1})
store_path = WORK / "store.h5"
extract_to_store(loaded.model, loaded.tokenizer, items, store_path, spans=spans,
                 depths=parse_depths(DEPTHS, MAX_NEW_TOKENS), layers=layers, hooks=("resid_post",),
                 answer_length=MAX_NEW_TOKENS, controls=controls, provenance=loaded.provenance(), progress=False)

# %% [markdown]
# ## One probe per position
#
# Every position on the same grouped folds; the header − position differences are paired, and the prompt-only
# reads (the last instruction token, the last template token) must score exactly 0.5 within prompts.

# %%
result = ad.positions(store_path, ad.PositionsConfig(folds=3, n_boot=200), out=WORK / "positions", progress=False)
print(result.summary())

# %%
from interp.notebook_utils import show_png

show_png(WORK / "positions" / "positions.png")
for name in ("t_inst", "prompt"):
    print(name, {k: v.get("value") for k, v in result.row(name, layers[0]).contrasts.items()})
