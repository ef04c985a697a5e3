"""Stage 8: causal analysis of the Safety-Token signal: span patching, direction ablation / steering and
transcoder features.

Modules: ``inputs`` (single-depth span batches), ``runner`` (the KV-cached span runner), ``metrics`` (refusal
log-odds, probe logits, effect sizes), ``patching``, ``directions``, ``transcoders`` (train / sae-lens I/O /
evaluate), ``features``, ``plots``, ``experiment`` (CLI setup). Hook sites come from :mod:`interp.model.hooks`.
CLI: ``anydepth patch``, ``anydepth ablate``, ``anydepth transcoders``.
"""
