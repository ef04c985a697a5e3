"""``anydepth corpus``: build (or resume) a training corpus from a declarative spec into a continuations JSONL.

The work is :func:`interp.corpus.run.build_corpus`; this module parses options and prints its summary.
"""

from __future__ import annotations

from interp.config import add_arguments, from_namespace


def register(subparsers) -> None:
    from interp.corpus.build import CorpusConfig
    from interp.model.loading import ModelConfig

    p = subparsers.add_parser("corpus", help="build a multi-source corpus from a spec (batched, resumable)",
                              description="Rerun the same command to resume an interrupted build.")
    add_arguments(p, ModelConfig)
    add_arguments(p, CorpusConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    from interp.corpus.build import CorpusConfig
    from interp.corpus.run import build_corpus
    from interp.model.loading import ModelConfig

    print(build_corpus(from_namespace(ModelConfig, args), from_namespace(CorpusConfig, args)).summary())
    return 0
