"""Stage 7: the evaluation harness of the ADA guard: deep-prefill, over-refusal, attacks, cost (JSON + plots, 95% CIs)."""
