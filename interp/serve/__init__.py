"""Stage 9: an OpenAI-compatible HTTP server around the guarded generator (``anydepth serve``)."""
