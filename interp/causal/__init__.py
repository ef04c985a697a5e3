"""Causal analysis of the Safety-Token signal: span patching, direction ablation/steering, transcoder features.

Modules: ``hooks`` (TL-named hook sites over HF models), ``inputs`` (span batches), ``metrics`` (refusal
log-odds, CIs), ``patching``, ``directions``, ``transcoders`` (train / sae-lens I/O / evaluate), ``features``,
``plots``, ``experiment`` (CLI setup). CLI: ``anydepth patch``, ``anydepth ablate``, ``anydepth transcoders``.
"""
