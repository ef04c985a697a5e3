"""Stage 2: the model. Loading (catalogue names, GGUF, local folders, hub ids) and everything that touches its
internals: the one hook module (layer lookup, tap / edit / stop hooks with TransformerLens names), KV-cache
marks and rollback, context limits and the few-row linear fast path.
"""
