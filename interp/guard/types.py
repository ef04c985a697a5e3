"""The guard's configuration and result types (``anydepth guard`` options; what a guarded generation returns)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from interp import UserError
from interp.guard.aggregate import AggregateConfig
from interp.probes.protocol import check_schedule

MODES = ("lp", "rk", "none")


@dataclass
class GuardConfig(AggregateConfig):
    """How the guard checks a generation (and, through :class:`AggregateConfig`, when its checks make it halt)."""

    mode: str = field(default="lp", metadata={"help": "lp (probe), rk (re-inject + keyword) or none",
                                              "choices": MODES})
    stride: int = field(default=25, metadata={"help": "check every this many generated tokens"})
    early_checks: tuple[int, ...] = field(default=(), metadata={"help": "extra check depths, e.g. 1 2 4 8 16"})
    check_at_start: bool = field(default=False, metadata={"help": "also check at depth 0 (right after the prompt)"})
    final_check: bool = field(default=True, metadata={"help": "check unchecked tokens when generation ends"})
    lookahead: int = field(default=20, metadata={"help": "ADA-RK: greedy tokens decoded after the span"})
    matcher: str = field(default="keyword", metadata={"help": "ADA-RK refusal matcher", "choices": ("keyword", "prob")})
    refusal_prob: float = field(default=0.5, metadata={"help": "ADA-RK prob matcher: opener mass threshold"})
    threshold: float | None = field(default=None, metadata={"help": "ADA-LP threshold (default: the probe set's)"})
    probe_layer: int | None = field(default=None, metadata={"help": "ADA-LP layer (default: probe set's best)"})
    max_new_tokens: int = field(default=256, metadata={"help": "generation length limit"})
    max_context: int | None = field(default=None, metadata={"help": "context limit (default: model's positions)"})
    refusal_message: str = field(default="I'm sorry, but I can't help with that.",
                                 metadata={"help": "text emitted on a halt ('' for none)"})
    buffer: bool = field(default=True, metadata={"help": "hold tokens until a check covering them passed"})
    early_exit: bool = field(default=False, metadata={"help": "ADA-LP: stop the check's forward at the probe layer"})
    piggyback: bool = field(default=False, metadata={"help": "ride each check on the next decode step"})
    fast_linear: bool = field(default=True, metadata={
        "help": "CPU float32: few-row linears as W·xᵀ (2.5-5x faster for checks and small batches)"})
    skip_forced_head: bool = field(default=True, metadata={
        "help": "rows whose next token is forced (and not checked there) skip the LM head"})
    do_sample: bool = field(default=False, metadata={"help": "sample instead of greedy decoding"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})

    def validate(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"guard mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        check_schedule(self)
        if self.lookahead < 1:
            raise UserError(f"--lookahead must be >= 1, got {self.lookahead}")
        if self.max_new_tokens < 1:
            raise UserError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.piggyback and self.mode == "rk" and self.matcher == "keyword":
            raise UserError("--piggyback works with mode lp or with --matcher prob (a keyword lookahead "
                            "would see the piggybacked token)")
        if self.piggyback and self.early_exit:
            raise UserError("--piggyback and --early-exit exclude each other (the decode step needs all layers)")
        if self.do_sample and not self.temperature > 0:
            raise UserError(f"--temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p must be in (0, 1], got {self.top_p}")
        if not self.refusal_prob > 0:  # above 1 never fires: tests use that to only score
            raise UserError(f"--refusal-prob must be > 0, got {self.refusal_prob}")
        if self.max_context is not None and self.max_context < 2:
            raise UserError(f"--max-context must be >= 2, got {self.max_context}")
        if self.probe_layer is not None and self.probe_layer < 0:
            raise UserError(f"--probe-layer must be >= 0 (a layer the probe set holds), got {self.probe_layer}")

    def is_due(self, depth: int) -> bool:
        if depth == 0:
            return self.check_at_start
        return depth % self.stride == 0 or depth in self.early_checks


@dataclass
class CheckEvent:
    """One check of one row."""

    depth: int
    flagged: bool
    detector: str
    score: float | None = None  # ADA-LP probability / prob-matcher mass
    fired: bool | None = None  # the aggregation rule fired at this check (set by the generator; = flagged for "any")
    lookahead: str | None = None  # ADA-RK / base decoded text


@dataclass
class GuardResult:
    """Outcome of one guarded generation row."""

    prompt_ids: list[int]
    generated_ids: list[int] = field(default_factory=list)  # all tokens the model produced (or was forced)
    emitted_ids: list[int] = field(default_factory=list)  # tokens released to the caller
    text: str = ""  # emitted text (+ refusal message on a halt)
    halted: bool = False
    halt_depth: int | None = None
    stop_reason: str = ""
    checks: list[CheckEvent] = field(default_factory=list)

    @property
    def leak(self) -> int:
        """Tokens released to the caller that no passed check covered (0 with buffering)."""
        passed = max([c.depth for c in self.checks if not c.flagged], default=0)
        return max(0, len(self.emitted_ids) - passed) if self.halted else 0


Callback = Callable[[int, str, Any], None]  # (row, kind, payload); kinds: tokens, check, halt, done
