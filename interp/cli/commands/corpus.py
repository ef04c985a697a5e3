"""``anydepth corpus``: build (or resume) a training corpus from a declarative spec into a continuations JSONL.

The work is :func:`interp.corpus.build.build_corpus`; this module parses options, checks the spec and its sources
before loading the model, and reports.
"""

from __future__ import annotations

from pathlib import Path

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
    from interp.cli.commands.generate import run_config
    from interp.cli.naming import check_out, file_slug
    from interp.corpus.build import CorpusConfig, build_corpus
    from interp.corpus.plan import plan_corpus
    from interp.corpus.spec import load_spec, spec_path
    from interp.model.loading import ModelConfig, load_model

    model_cfg, cfg = from_namespace(ModelConfig, args), from_namespace(CorpusConfig, args)
    cfg.validate()
    if cfg.out:
        check_out(cfg.out, "dir")  # before the spec's data are read
    spec = load_spec(cfg.spec)
    tasks = plan_corpus(spec, where=str(spec_path(cfg.spec)))  # sources and counts checked before the model loads
    out = Path(cfg.out) if cfg.out else check_out(Path("runs") / "corpus" / (
        f"{file_slug(model_cfg.model)}-{file_slug(spec.name)}-{spec.sha256()[:12]}"), "dir")
    loaded = load_model(model_cfg)
    result = build_corpus(loaded.model, loaded.tokenizer, spec, out, model_provenance=loaded.provenance(),
                          batch_size=cfg.gen_batch_size, too_long=cfg.too_long, gen_dtype=cfg.gen_dtype,
                          run_config=run_config(model=model_cfg, corpus=cfg), tasks=tasks)
    for e in result["entries"]:
        print(f"  {e['entry']:>2} {e['name']} ({e['label']}): {e['rows']}/{e['planned']} rows")
    print(f"corpus {spec.name} (spec sha256 {spec.sha256()[:12]}): {result['rows']} rows in {out}")
    return 0
