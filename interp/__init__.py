"""Safety-Token probing, the Any-Depth Alignment guard and causal analysis for chat LLMs.

The top-level API, one function per stage with typed configs and results (imported lazily, so ``import interp``
costs nothing until a name is used)::

    import interp as ad

    lm = ad.load_model("qwen2.5-coder-0.5b-instruct")           # or a local folder, a GGUF file, a hub id
    store = ad.extract_activations(lm, ad.ExtractConfig(continuations="c.jsonl", out="s.h5"))
    sweep = ad.sweep(store.path)                                 # SweepResult: per layer x depth, LOSO
    probes = ad.train(store.path, ad.TrainConfig(out="probes"))  # ProbeSet with held-out numbers
    study = ad.run_study(ad.StudyConfig(spec="none"))            # every stage, the report, StudyResult

The subpackages follow the data path: ``data`` → ``spans`` → ``model`` → ``generate`` / ``corpus`` → ``extract`` →
``probes`` → ``guard`` / ``evaluate`` → ``causal`` → ``serve`` → ``study``, with ``cli`` on top (docs/design.md).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.5.0"


class UserError(ValueError):
    """Bad input from the user: printed as one actionable line by the CLI, never a traceback."""


# name -> module that defines it (imported on first use)
_API: dict[str, str] = {
    # models and data
    "ModelConfig": "interp.model.loading", "LoadedModel": "interp.model.loading", "load_model": "interp.model.loading",
    "load_dataset": "interp.data", "list_datasets": "interp.data",
    "SafetySpans": "interp.spans.derive", "derive_safety_spans": "interp.spans.derive",
    # continuations and corpora
    "GenerateConfig": "interp.generate.continuations", "make_continuations": "interp.generate.run",
    "GenerateResult": "interp.generate.run",
    "CorpusConfig": "interp.corpus.build", "build_corpus": "interp.corpus.run", "CorpusResult": "interp.corpus.run",
    # activations
    "ExtractConfig": "interp.extract.packed", "extract_activations": "interp.extract.run", "ExtractResult": "interp.extract.packed",
    "ActivationStore": "interp.extract.store",
    "StoreUnion": "interp.extract.union",
    # probes
    "ProbeConfig": "interp.probes.oof", "SweepConfig": "interp.probes.run", "sweep": "interp.probes.run",
    "SweepResult": "interp.probes.sweep", "TrainConfig": "interp.probes.train", "train": "interp.probes.run",
    "ProbeSet": "interp.probes.probeset", "HeldOutReport": "interp.probes.heldout",
    "LeverConfig": "interp.probes.levers", "LeverResult": "interp.probes.levers", "levers": "interp.probes.run",
    "PositionsConfig": "interp.probes.positions", "PositionsResult": "interp.probes.positions",
    "positions": "interp.probes.run", "readout_transfer": "interp.probes.run", "ReadoutLoso": "interp.probes.transfer",
    "RecalibrateConfig": "interp.probes.recalibrate", "Recalibration": "interp.probes.recalibrate",
    "recalibrate": "interp.probes.recalibrate",
    # the guard and its evaluations
    "GuardConfig": "interp.guard.types", "GuardedGenerator": "interp.guard.generator",
    "GuardResult": "interp.guard.types",
    "EvalConfig": "interp.evaluate.common", "EvaluationResult": "interp.evaluate.run", "evaluate_guard": "interp.evaluate.run",
    "evaluate_deep_prefill": "interp.evaluate.run", "evaluate_over_refusal": "interp.evaluate.run",
    "evaluate_attacks": "interp.evaluate.run", "evaluate_cost": "interp.evaluate.run",
    # causal analysis
    "CausalConfig": "interp.causal.experiment", "PatchConfig": "interp.causal.studies",
    "AblateConfig": "interp.causal.studies", "CausalResult": "interp.causal.studies", "patch": "interp.causal.studies",
    "ablate_directions": "interp.causal.studies", "feature_study": "interp.causal.studies",
    "TranscoderDataConfig": "interp.causal.transcoder_run", "TranscoderTrainConfig": "interp.causal.transcoders",
    "train_transcoders": "interp.causal.transcoder_run", "TranscodersResult": "interp.causal.transcoder_run",
    # the whole study
    "StudyConfig": "interp.study.config", "StudyResult": "interp.study.result", "run_study": "interp.study.pipeline",
    "refresh_study": "interp.study.pipeline", "compare_runs": "interp.study.compare",
    "RunComparison": "interp.study.compare",
    "JudgeConfig": "interp.study.judged", "JudgedPrefills": "interp.study.judged", "judge_run": "interp.study.judged",
    "ContentJudge": "interp.evaluate.content", "ContentJudgeConfig": "interp.evaluate.content",
}

__all__ = ["UserError", "__version__", *sorted(_API)]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'interp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
