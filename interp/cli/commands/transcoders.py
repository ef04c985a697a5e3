"""``anydepth transcoders {train,evaluate,list}``: per-layer MLP transcoders in sae-lens format."""

from __future__ import annotations

import json

from interp.causal.transcoder_run import DEFAULT_ROOT, TranscoderDataConfig
from interp.config import add_arguments, from_namespace


def register(subparsers) -> None:
    from interp.causal.transcoders import TranscoderTrainConfig
    from interp.model.loading import ModelConfig

    p = subparsers.add_parser("transcoders", help="train / evaluate / list MLP transcoders (sae-lens format)")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train transcoders on a few layers and save them in sae-lens format")
    add_arguments(t, ModelConfig)
    add_arguments(t, TranscoderDataConfig)
    add_arguments(t, TranscoderTrainConfig, skip=("seed",))  # --seed from the data config serves both
    t.set_defaults(func=run_train)
    e = sub.add_parser("evaluate", help="FVU, L0 and spliced next-token loss of saved transcoders")
    add_arguments(e, ModelConfig)
    add_arguments(e, TranscoderDataConfig, skip=("layers", "probes", "max_tokens", "root"))
    e.add_argument("paths", nargs="+", help="transcoder folders")
    e.set_defaults(func=run_evaluate)
    ls = sub.add_parser("list", help="list saved transcoders and their metrics")
    ls.add_argument("--root", default=DEFAULT_ROOT, help=f"folder to search (default: {DEFAULT_ROOT})")
    ls.set_defaults(func=run_list)


def run_train(args) -> int:
    from interp.causal.transcoder_run import train_transcoders
    from interp.causal.transcoders import TranscoderTrainConfig
    from interp.model.loading import ModelConfig

    print(train_transcoders(from_namespace(ModelConfig, args), from_namespace(TranscoderDataConfig, args),
                            from_namespace(TranscoderTrainConfig, args)).summary())
    return 0


def run_evaluate(args) -> int:
    from interp.causal.transcoder_run import evaluate_saved
    from interp.model.loading import ModelConfig

    for record in evaluate_saved(from_namespace(ModelConfig, args), from_namespace(TranscoderDataConfig, args),
                                 args.paths):
        print(json.dumps(record))
    return 0


def run_list(args) -> int:
    from interp.causal.transcoders import describe_transcoders

    print(describe_transcoders(args.root))
    return 0
