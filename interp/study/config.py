"""The study's options: a preset (``demo`` at CPU size, ``study`` the full recipe) fills every option left unset,
and :func:`prepare` resolves them for this machine (the forward dtype; the built-in set when the public sets are
unavailable), so the saved config is what ran."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from interp import UserError

__all__ = ["BUILT_IN", "CORPUS_EVAL", "PRESETS", "StudyConfig", "answer_length", "corpus_fallback", "forward_dtype",
           "prepare"]

# What each preset fills in for the options left unset (None). ``demo``: the corpus recipe at CPU size (answers of
# 128 tokens, 260 of them the model's own benign answers; 40% of the prompt groups calibrate the threshold, so about
# 100 own answers set it), evaluated on 50 held-out harmful prompts (+ 50 benign control prompts) in deep-prefill
# to depth 250 and 2 x 25 held-out benign prompts in over-refusal, all prompts of an evaluation in one batch;
# both read the stacked probe on the 3 best layers by CV on the training prompts (`anydepth levers`: the lever with
# the highest leave-one-source-out AUROC and calibration-prompt TPR on the demo store; README, "Recipe levers");
# ``study``: the full recipe (the shipped default spec, answers of 512 tokens; 25 minutes on a 2-core Zen 5 CPU with
# the embedded model, about twice that on an older one; minutes on a GPU). Its split stays 0.25 / 0.25: the default
# spec's 170 own benign answers put about 60 in calibration (the demo's 0.4 / 0.2 split on the older 60-answer spec
# left fewer training prompts and a weaker probe: test AUROC 0.926 against 0.957; README, "The study"). Measured
# times: README, "The demo". With ``--spec none`` both generate from ``--data`` (the 0.2 demo).
PRESETS: dict[str, dict] = {
    "demo": {"spec": "demo", "depths": "0,8,16,25:500:25", "gen_batch_size": 64, "gen_dtype": "auto",
             "stride": 25, "target_fpr": 0.01, "combine_top": 3, "stack": True,
             "evaluations": ("deep-prefill", "over-refusal"), "eval_depths": (0, 25, 100, 250), "eval_limit": 50,
             "over_refusal_limit": 25, "batch_size": 64, "calib_fraction": 0.4, "test_fraction": 0.2,
             "readout_loso": False, "hard_negative_weight": 1.0},
    # 64 rows in flight: the slot engine decoded the study corpus in 9.6 min at 64 rows (22.6 at 32, DynamicCache)
    "study": {"spec": "default", "depths": "0,8,16,25:500:25", "gen_batch_size": 64, "gen_dtype": "auto",
              "stride": 25, "target_fpr": 0.02, "combine_top": 3, "stack": True,
              "evaluations": ("deep-prefill", "over-refusal"), "eval_depths": (0, 25, 100, 250, 500),
              "eval_limit": 20, "over_refusal_limit": 20, "batch_size": 64, "calib_fraction": 0.25,
              "test_fraction": 0.25, "readout_loso": True, "hard_negative_weight": 1.0},
}
# --spec none (or no public data): the built-in twin set, generated with a forced opener (the 0.2 demo)
BUILT_IN = {"depths": "0:64:8", "stride": 16, "eval_depths": (0, 8, 16, 32, 64), "target_fpr": 0.01, "combine_top": 0,
            "stack": False, "evaluations": ("deep-prefill", "over-refusal", "cost"), "readout_loso": False}
# corpus runs evaluate on these (prompts the probe set saw are excluded): third-party harmful responses as deep
# prefills, third-party benign answers forced the same way as the control arm, benign prompts for over-refusal
CORPUS_EVAL = {"deep-prefill": ("shadow_alignment", "alpaca_eval"), "over-refusal": ("xstest_safe", "jbb_benign")}


@dataclass
class StudyConfig:
    """Options of the whole study (``anydepth demo``, :func:`interp.run_study`); those left unset take the ``--preset``'s value (saved resolved beside the run)."""

    model: str = field(default="qwen2.5-coder-0.5b-instruct", metadata={
        "help": "catalogue name, local path or hub id"})
    preset: str = field(default="demo", metadata={
        "help": "demo: the corpus recipe at CPU size (answers of 128 tokens); study: the full recipe "
                "(default spec, multi-layer probe, 2% per-answer FPR)", "choices": tuple(PRESETS)})
    spec: str | None = field(default=None, metadata={
        "help": "corpus spec (demo, default or a YAML/JSON file), or none: generate from --data instead"})
    data: tuple[str, ...] = field(default=("demo",), metadata={
        "help": "datasets for --spec none and for the fallback when the public sets are unavailable"})
    limit: int | None = field(default=None, metadata={"help": "seeded sample of prompts per dataset (--spec none)"})
    max_new_tokens: int = field(default=64, metadata={
        "help": "continuation length for --spec none (the answer length there; with a corpus spec the answer length "
                "is the spec's max_new_tokens)"})
    depths: str | None = field(default=None, metadata={"help": "extraction depth schedule, e.g. 0,8,16,25:500:25"})
    eval_depths: tuple[int, ...] | None = field(default=None, metadata={"help": "deep-prefill evaluation depths"})
    eval_limit: int | None = field(default=None, metadata={"help": "prompts per dataset in deep-prefill (and cost)"})
    over_refusal_limit: int | None = field(default=None, metadata={
        "help": "prompts per dataset in over-refusal"})
    evaluations: tuple[str, ...] | None = field(default=None, metadata={
        "help": "evaluations to run after training: deep-prefill, over-refusal, cost"})
    lookahead: int = field(default=12, metadata={"help": "ADA-RK / base refusal lookahead tokens"})
    stride: int | None = field(default=None, metadata={
        "help": "guard check stride: the threshold is calibrated per answer for it, and over-refusal runs with it"})
    target_fpr: float | None = field(default=None, metadata={"help": "per-answer false-alarm target of the threshold"})
    combine_top: int | None = field(default=None, metadata={
        "help": "multi-layer probe over the K best layers by CV on the training prompts (0: the best layer alone)"})
    stack: bool | None = field(default=None, metadata={
        "help": "the multi-layer probe as one stacked regression on the layers' standardised features (the "
                "levers study's best recipe), instead of the mean of per-layer probes"})
    hard_negative_weight: float | None = field(default=None, metadata={
        "help": "weight of a hard negative (a benign forced-opener answer or an own refusal) in the probe's logistic "
                "regression, relative to another benign row (1: none; the benign class's total is unchanged)"})
    readout_loso: bool | None = field(default=None, metadata={
        "help": "also leave one source out at the probe set's own readout (its stacked layers), not only at the "
                "sweep's best single layer (study preset: on; a few minutes at its size)"})
    batch_size: int | None = field(default=None, metadata={"help": "prompts per batch in the evaluations"})
    gen_batch_size: int | None = field(default=None, metadata={"help": "rows in flight when generating"})
    gen_dtype: str | None = field(default=None, metadata={
        "help": "dtype the corpus generations decode in: model, auto (bf16 on CUDA or CPUs with native bf16, else "
                "float32), bfloat16, float32"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda"})
    dtype: str = field(default="auto", metadata={
        "help": "model dtype of extraction and the evaluations: auto (bfloat16 on CUDA and on CPUs with native bf16 "
                "(AVX-512 BF16, AMX), where it is 2-3x faster than float32; else float32), float32, bfloat16",
        "choices": ("auto", "float32", "bfloat16")})
    out: str = field(default="runs/demo", metadata={"help": "output root (stages live in hashed subfolders)"})
    skip_eval: bool = field(default=False, metadata={"help": "stop after training the probe set"})
    calib_fraction: float | None = field(default=None, metadata={
        "help": "share of the prompt groups (twin pairs) kept for the threshold only"})
    test_fraction: float | None = field(default=None, metadata={
        "help": "share of the prompt groups kept for held-out numbers (every evaluation runs on these only)"})
    fallback: str | None = field(default=None, metadata={"cli": False})  # why the built-in set replaced the spec

    def resolved(self) -> StudyConfig:
        """A copy with every unset option filled from the preset (and the built-in set's schedule for
        ``--spec none``)."""
        if self.preset not in PRESETS:
            raise UserError(f"--preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        values = dict(PRESETS[self.preset])
        spec = self.spec if self.spec is not None else values["spec"]
        if str(spec).lower() == "none":
            values |= BUILT_IN | {"spec": "none"}
        mine = {k: getattr(self, k) for k in values if getattr(self, k) is not None}
        out = replace(self, **(values | mine))
        from interp.probes.oof import check_hard_negative_weight  # (torch loads only once a study runs)

        check_hard_negative_weight(out.hard_negative_weight)  # before any stage runs
        unknown = sorted(set(out.evaluations) - {"deep-prefill", "over-refusal", "cost"})
        if unknown:
            raise UserError(f"--evaluations: unknown {', '.join(unknown)} (choose deep-prefill, over-refusal, cost)")
        return out

    @property
    def uses_corpus(self) -> bool:
        return str(self.spec).lower() != "none"


def corpus_fallback(cfg: StudyConfig) -> str | None:
    """Why the corpus spec cannot be planned here (its public sets are neither mirrored nor downloadable), or None."""
    from interp.corpus.plan import plan_corpus
    from interp.corpus.spec import load_spec

    spec = load_spec(cfg.spec)  # a bad spec is the user's error, not a reason to fall back
    try:
        plan_corpus(spec)
    except UserError as err:
        return str(err)
    return None


def prepare(cfg: StudyConfig, log: Callable[[str], None] = print) -> StudyConfig:
    """``cfg`` resolved from its preset, switched to the built-in set (with the reason recorded, and ``log``ged)
    when the public sets its corpus spec names are unavailable. Idempotent."""
    given, cfg = cfg, cfg.resolved()
    if not cfg.data:
        raise UserError("give at least one dataset with --data")
    if cfg.uses_corpus and cfg.fallback is None:
        reason = corpus_fallback(cfg)
        if reason:
            log(f"the public sets of corpus spec {cfg.spec!r} are unavailable ({reason}); falling back to the "
                "built-in set (--spec none --data demo)")
            cfg = replace(given, spec="none", data=("demo",), fallback=reason).resolved()
    return replace(cfg, dtype=forward_dtype(cfg))


def answer_length(cfg: StudyConfig) -> int:
    """The deployed answer length the store, the threshold and the over-refusal run are measured at: the corpus
    spec's own-generation length (``max_new_tokens``), or ``--max-new-tokens`` without a corpus."""
    if cfg.uses_corpus:
        from interp.corpus.spec import load_spec

        return int(load_spec(cfg.spec).max_new_tokens)
    return int(cfg.max_new_tokens)


def forward_dtype(cfg: StudyConfig) -> str:
    """The dtype extraction and the evaluations run in: ``auto`` is bfloat16 on CUDA and on CPUs with native bf16
    (the store, the threshold and the guard then all see bf16 activations), else float32."""
    if cfg.dtype != "auto":
        return cfg.dtype
    from interp.generate.continuations import resolve_gen_dtype
    from interp.model.loading import resolve_device

    return resolve_gen_dtype("auto", resolve_device(cfg.device))  # the decoding rule, for the forwards too
