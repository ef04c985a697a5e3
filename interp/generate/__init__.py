"""Stage 3: continuations. Prompts from :mod:`interp.data` become tokenized ``prompt ‖ response`` pairs: the
model's own answers, forced-opener (prefill) continuations, or third-party responses, saved as JSONL.
"""
