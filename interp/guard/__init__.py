"""Stage 6: the ADA guard at inference time. ``generator`` decodes with periodic checks; ``checks`` runs
ADA-LP (probe), ADA-RK (re-injected header + refusal judge) and the base lookahead over the live KV cache;
``refusal`` is the one refusal judge (keyword phrases, opener tokens, probability mass).
"""
