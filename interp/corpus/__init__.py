"""Training corpora from a declarative spec (``anydepth corpus``): which sources, how many rows of each, which
responses (own answers, forced-opener prefills, third-party responses, own refusals as hard negatives).

``spec`` parses and checks the YAML/JSON file, ``plan`` picks the records from each source and gives every row a
deterministic id, ``journal`` appends rows durably and reads them back on resume, ``build`` generates the rows
and writes the continuations JSONL that ``anydepth extract`` reads. Shipped specs live in ``specs/``.
"""
