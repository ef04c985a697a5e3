"""Stage 1 of the data path: the Safety-Token span of a chat template.

``derive`` finds the assistant header and end-of-turn text of any chat template and tokenizes them in context
(:class:`~interp.spans.derive.SafetySpans`, the one span type); ``render`` renders probe conversations through
the template; ``overrides`` reads the YAML overrides for templates whose span cannot be derived.
"""
