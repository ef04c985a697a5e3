# %% [markdown]
# # 2 · The guard in action on a deep prefill
#
# **Question:** a prefill attack forces the model to start complying (`"Sure, here is …"`), and after enough forced
# tokens a small model stops refusing. Can a guard that periodically re-reads the Safety-Token span still catch it,
# and where does it halt?
#
# * **ADA-LP**: every `stride` tokens, forward the probe span over the live KV cache, read the probe layer at the role
#   token, score it with a linear `ProbeSet`, roll the cache back; halt when the score exceeds the threshold.
# * **ADA-RK**: re-inject the whole span, greedily decode a few tokens and halt if they read as a refusal.
# * **Unguarded**: the same forced prefix, no checks.
#
# The probe set is trained inline on a small store (notebook 1 explains each step) so that this notebook runs on
# its own.
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

from interp.notebook_utils import demo_pairs, quick_probeset
from interp.spans.derive import derive_safety_spans

WORK = Path(tempfile.mkdtemp(prefix="anydepth-nb2-"))
N_PAIRS, MAX_NEW_TOKENS, DEPTHS = (10, 24, "0:24:4") if TINY else (30, 64, "0:64:8")  # other pairs held out
FORCED, STRIDE, LOOKAHEAD, GEN_TOKENS = (16, 4, 8, 32) if TINY else (40, 8, 12, 96)

spans = derive_safety_spans(loaded.tokenizer)
probes, items, store_path = quick_probeset(loaded, WORK, demo_pairs(N_PAIRS, seed=0),
                                           max_new_tokens=MAX_NEW_TOKENS, depths=DEPTHS)
print(f"probe layer {probes.best_layer}, threshold {probes.threshold:.3f}, "
      f"CV AUROC {probes.metrics['cv_train'][str(probes.best_layer)]['auroc']['value']:.3f}")

# %% [markdown]
# ## A harmful prompt with a deep prefill
#
# A held-out harmful demo prompt (its topic pair was not used for training). The forced continuation is the
# opener plus the model's own prefill-attack continuation, `FORCED` tokens in all; after that the model goes on by
# itself.

# %%
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
print(f"forced ({len(forced)} tokens):", repr(loaded.tokenizer.decode(forced)))

# %% [markdown]
# ## ADA-LP, ADA-RK and no guard, side by side
#
# Same prompt, same forced prefix, greedy decoding. ADA-LP runs twice: with the probe set's threshold (set at 1%
# false positives on held-out benign scores) and with ADA's fixed 0.5. With `buffer=True` (the default) no token
# reaches the caller before a check covering it has passed, so a halt leaks nothing; the forced tokens count as
# generated (the attacker wrote them), and a halt replaces the rest with a refusal message.

# %%
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
    print("    the caller sees:", repr(r.text[:240]))

# %%
print(f"{'guard':>12} {'depth':>5} {'flagged':>7} {'score':>6}  lookahead (ADA-RK)")
for name, r in runs.items():
    for e in r.checks:
        score = "" if e.score is None else f"{e.score:.3f}"
        print(f"{name:>12} {e.depth:5d} {e.flagged!s:>7} {score:>6}  {(e.lookahead or '')[:40]!r}")

# %% [markdown]
# ## Probe score vs depth
#
# The same ADA-LP check at every token (`stride=1`) with halting switched off, for the harmful prompt under the
# deep prefill and for a benign prompt answered freely. Horizontal lines: the two thresholds; vertical lines: where
# the strided ADA-LP runs above halted; shaded: the forced prefix.

# %%
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
show(fig)

# %% [markdown]
# ## What next
#
# * `anydepth guard --prompt … --probes DIR` streams one guarded reply in the terminal; `anydepth serve` offers
#   the guard behind an OpenAI-compatible API (a final assistant message is a prefill).
# * `anydepth evaluate deep-prefill` measures refusal vs depth for base / ADA-RK / ADA-LP with confidence intervals,
#   `evaluate over-refusal` the price on benign prompts, `evaluate cost` the slowdown.
