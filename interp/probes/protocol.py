"""The held-out protocol: prompt identities, the train / calibration / test split, the guard's check schedule
and the per-answer threshold.

Every number the toolkit reports about a probe is measured on prompts the probe was neither trained nor
calibrated on. The pieces that make this hold by construction live here:

* :func:`prompt_key` / :func:`group_key`: a prompt's identity is a hash of its normalised text; topic-matched
  twins (records sharing a ``pair_id``) form one group, so they always land on the same side of a split.
* :func:`three_way_split`: groups → ``train`` (fit, layer choice), ``calibration`` (only the threshold) and
  ``test`` (only reported numbers), stratified by the labels a group holds.
* :class:`Schedule`: the depths at which the guard checks an answer of ``n`` tokens (stride, early checks,
  depth 0, final check) and the aggregation rule that makes it fire (:mod:`interp.guard.aggregate`: any check,
  k of the last n, an EMA); :func:`answer_scores` gives each answer the score whose crossing makes the guard
  fire on it.
* :func:`per_answer_threshold`: the threshold at which at most ``target_fpr`` of the calibration benign *answers*
  fire at least once, with the resolution the calibration set allows.
* :func:`assert_disjoint`: refuses to report a rate on answers that set the threshold.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from interp import UserError
from interp.guard.aggregate import Aggregation

ROLES = ("train", "calibration", "test")


def normalise_prompt(text: str) -> str:
    """NFKC, case-folded, curly quotes straightened, whitespace collapsed: two spellings of one prompt agree."""
    text = unicodedata.normalize("NFKC", str(text)).replace("\u2019", "'").replace("\u2018", "'")
    text = text.replace("\u201c", '"').replace("\u201d", '"')
    return re.sub(r"\s+", " ", text.casefold()).strip()


def prompt_key(text: str) -> str:
    """Identity of a prompt: the first 16 hex digits of the sha256 of its normalised text."""
    return hashlib.sha256(normalise_prompt(text).encode()).hexdigest()[:16]


def group_key(prompt: str, pair_id: str | None = None) -> str:
    """Split unit of a prompt: its twin pair when it has one (``pair:<id>``), else its own text hash."""
    return f"pair:{pair_id}" if pair_id not in (None, "") else f"prompt:{prompt_key(prompt)}"


@dataclass
class SplitConfig:
    """Fractions of prompt groups held out for the threshold and for the reported test numbers."""

    calib_fraction: float = field(default=0.25, metadata={
        "help": "fraction of prompt groups kept for the threshold only (0: threshold on out-of-fold training "
                "scores, labelled in-sample)"})
    test_fraction: float = field(default=0.25, metadata={
        "help": "fraction of prompt groups kept for held-out test numbers (never trained or calibrated on)"})

    def validate(self) -> None:
        for name in ("calib_fraction", "test_fraction"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise UserError(f"--{name.replace('_', '-')} must be in [0, 1), got {v}")
        if self.calib_fraction + self.test_fraction >= 1:
            raise UserError("--calib-fraction + --test-fraction must leave prompts to train on (sum < 1)")


def three_way_split(groups: np.ndarray, y: np.ndarray, cfg: SplitConfig, seed: int = 0) -> np.ndarray:
    """Role per row (``"train" | "calibration" | "test"``): whole groups are assigned, stratified by which labels
    a group holds (harmful only, benign only, both), so each role gets its share of each kind."""
    cfg.validate()
    groups, y = np.asarray(groups).astype(str), np.asarray(y)
    names, codes = np.unique(groups, return_inverse=True)
    has_h = np.bincount(codes, weights=(y == 1), minlength=len(names)) > 0
    has_b = np.bincount(codes, weights=(y == 0), minlength=len(names)) > 0
    kind = has_h.astype(int) + 2 * has_b.astype(int)
    role = np.full(len(names), "train", dtype=object)
    rng = np.random.default_rng(seed)
    for k in np.unique(kind):
        members = rng.permutation(np.nonzero(kind == k)[0])
        n_test = int(round(cfg.test_fraction * len(members)))
        n_cal = int(round(cfg.calib_fraction * len(members)))
        role[members[:n_test]] = "test"
        role[members[n_test:n_test + n_cal]] = "calibration"
    return role[codes].astype(str)


def describe_split(roles: np.ndarray, groups: np.ndarray, prompts: np.ndarray, y: np.ndarray,
                   sources: np.ndarray) -> dict:
    """JSON record of a split: per role the prompt keys, groups, row counts by label and by source."""
    out = {}
    for role in ROLES:
        m = np.asarray(roles) == role
        src, cnt = np.unique(np.asarray(sources)[m].astype(str), return_counts=True)
        out[role] = {"n_rows": int(m.sum()), "n_harmful": int((np.asarray(y)[m] == 1).sum()),
                     "n_benign": int((np.asarray(y)[m] == 0).sum()),
                     "groups": sorted(set(np.asarray(groups)[m].astype(str).tolist())),
                     "prompt_keys": sorted({prompt_key(p) for p in np.asarray(prompts)[m]}),
                     "sources": {str(s): int(c) for s, c in zip(src, cnt)}}
    return out


def check_schedule(cfg) -> None:
    """One-line errors for a guard schedule (stride, early checks, aggregation rule) that cannot run (shared by
    the guard's, train's and evaluate's options)."""
    if cfg.stride < 1:
        raise UserError(f"--stride must be >= 1, got {cfg.stride}")
    if any(d < 1 for d in cfg.early_checks):
        raise UserError(f"--early-checks depths must be >= 1, got {list(cfg.early_checks)}")
    Aggregation.of(cfg)


@dataclass(frozen=True)
class Schedule:
    """When the guard checks an answer: every ``stride`` tokens, at ``early_checks``, at depth 0 if
    ``check_at_start``, and at the answer's end if ``final_check`` and the end was not checked already. The guard
    fires on an answer when its aggregation ``rule`` fires (:mod:`interp.guard.aggregate`; default: any check)."""

    stride: int = 25
    early_checks: tuple[int, ...] = ()
    check_at_start: bool = False
    final_check: bool = True
    rule: Aggregation = Aggregation()

    @property
    def aggregation(self) -> str:
        return self.rule.describe()

    @classmethod
    def of(cls, cfg) -> Schedule:
        """The schedule of a :class:`interp.guard.types.GuardConfig` (or any object with the same fields)."""
        return cls(int(cfg.stride), tuple(sorted(int(d) for d in cfg.early_checks)), bool(cfg.check_at_start),
                   bool(cfg.final_check), Aggregation.of(cfg))

    @classmethod
    def from_dict(cls, d: dict) -> Schedule:
        if "aggregate" in d:
            rule = Aggregation.from_dict(d["aggregate"])
        elif int(d.get("k_of_n", 1)) == 1:  # saved before the aggregation options: the single-check rule
            rule = Aggregation()
        else:
            raise UserError(f"this probe set was calibrated for the unwindowed {d['k_of_n']}-of-n rule of an earlier "
                            "version; retrain it with --aggregate k_of_n --k-of-n K --window N")
        return cls(int(d["stride"]), tuple(int(x) for x in d.get("early_checks", ())),
                   bool(d.get("check_at_start", False)), bool(d.get("final_check", True)), rule)

    def to_dict(self) -> dict:
        return {"stride": self.stride, "early_checks": list(self.early_checks), "check_at_start": self.check_at_start,
                "final_check": self.final_check, "aggregate": self.rule.to_dict(), "aggregation": self.aggregation}

    def depths(self, n_tokens: int) -> list[int]:
        """Depths checked on an answer of ``n_tokens`` generated tokens, ascending."""
        n = int(n_tokens)
        out = set(range(self.stride, n + 1, self.stride)) | {d for d in self.early_checks if 1 <= d <= n}
        if self.check_at_start:
            out.add(0)
        if self.final_check and n > 0 and n not in out:
            out.add(n)
        return sorted(out)


def answer_scores(scores: np.ndarray, depths: Sequence[int], n_tokens: Sequence[int], schedule: Schedule
                  ) -> tuple[np.ndarray, dict]:
    """Each answer's score under ``schedule``: the guard fires on the answer exactly when this score reaches
    the threshold. It is the maximum over the answer's checks of the rule's statistic
    (:meth:`interp.guard.aggregate.Aggregation.answer_statistic`): for "any check" the maximum check score, for
    k of the last n checks the largest k-th largest score in a window of n checks, for the EMA its maximum.
    Scores are per depth ``[N, D]`` at stored ``depths``; the checks are taken in depth order.

    Checks at depths the store does not hold cannot be scored; ``coverage`` says how many scheduled checks
    were scored (``missing_depths`` lists the first few absent ones); a window then spans the scored checks.
    Answers with fewer than k scored checks get NaN; an answer with fewer than k scheduled checks can never fire
    and gets -inf.
    """
    scores = np.asarray(scores, np.float64)
    col = {int(d): k for k, d in enumerate(depths)}
    out = np.full(len(scores), np.nan)
    n_sched = n_scored = 0
    missing: set[int] = set()
    for i, n in enumerate(n_tokens):
        want = schedule.depths(int(n))
        got = [col[d] for d in want if d in col and np.isfinite(scores[i, col[d]])]
        missing.update(d for d in want if d not in col)
        n_sched += len(want)
        n_scored += len(got)
        k = schedule.rule.k
        if len(want) < k:
            out[i] = -np.inf
        elif len(got) >= k:
            out[i] = schedule.rule.answer_statistic(scores[i, got])
    return out, {"scheduled_checks": n_sched, "scored_checks": n_scored,
                 "coverage": n_scored / n_sched if n_sched else None, "missing_depths": sorted(missing)[:20]}


def per_answer_threshold(benign_answer_scores: np.ndarray, target_fpr: float) -> dict:
    """Threshold at which at most ``target_fpr`` of these benign answers fire (score > threshold).

    With fewer than ``1 / target_fpr`` answers the target cannot be resolved: the threshold then sits above
    every calibration answer (0 of n fire), ``resolved`` is False and ``resolution`` (= 1/n) is the smallest
    false-alarm rate the set can tell apart from zero.
    """
    from interp.probes.calibration import threshold_at_fpr

    s = np.asarray(benign_answer_scores, np.float64)
    s = s[np.isfinite(s)]
    if len(s) == 0:
        raise UserError("no benign calibration answers to set the threshold on")
    thr = threshold_at_fpr(s, target_fpr)
    need = int(np.ceil(1 / target_fpr - 1e-9)) if target_fpr > 0 else None
    # no rate on these answers is returned: they chose the threshold, so their FPR is ≤ target by construction
    return {"threshold": thr, "target_fpr": target_fpr, "n_answers": int(len(s)),
            "resolution": 1.0 / len(s), "resolved": need is not None and len(s) >= need, "answers_needed": need}


def assert_disjoint(test_ids: Iterable, calibration_ids: Iterable, what: str = "test answers") -> None:
    """Refuse to report a held-out rate on answers that were used to set the threshold (or to train)."""
    shared = set(map(str, test_ids)) & set(map(str, calibration_ids))
    if shared:
        raise UserError(f"{len(shared)} {what} were also used for calibration/training (e.g. {sorted(shared)[0]!r}); "
                        "a held-out rate must be measured on other prompts")


def exclude_seen(records: Sequence, probes, allow_overlap: bool = False) -> tuple[list, dict]:
    """Drop ``(dataset, Record)`` pairs whose prompt (or twin pair) trained or calibrated ``probes``.

    Returns the kept pairs and the split record an evaluation writes: how many were excluded, and whether the
    numbers are held out (``in_sample`` False), in-sample (``--allow-train-overlap`` kept seen prompts) or of
    unknown status (a probe set that records no split).
    """
    import warnings

    seen = probes.seen() if probes is not None and hasattr(probes, "seen") else None
    if probes is None or getattr(probes, "kind", "") == "random":
        return list(records), {"n_candidates": len(records), "excluded": 0, "n_eval": len(records),
                               "in_sample": None, "status": "no trained probe set: nothing to exclude"}
    if seen is None:
        warnings.warn("the probe set records no training prompts (made before the held-out protocol?): "
                      "in-sample status of these numbers is unknown; retrain with `anydepth train`", stacklevel=2)
        return list(records), {"n_candidates": len(records), "excluded": 0, "n_eval": len(records),
                               "in_sample": None, "status": "unknown: probe set records no split"}
    keys, groups = seen
    hit = [prompt_key(r.prompt) in keys or group_key(r.prompt, (r.meta or {}).get("pair_id")) in groups
           for _, r in records]
    n_hit = int(sum(hit))
    if allow_overlap:
        return list(records), {"n_candidates": len(records), "excluded": 0, "n_eval": len(records),
                               "n_seen": n_hit, "in_sample": n_hit > 0,
                               "status": "IN-SAMPLE: --allow-train-overlap kept prompts the probe set was trained "
                                         "or calibrated on" if n_hit else "held out (no overlap found)"}
    kept = [rec for rec, h in zip(records, hit) if not h]
    if not kept:
        raise UserError(f"all {len(records)} evaluation prompts were used to train or calibrate the probe set; "
                        "evaluate on other prompts (the probe set's test split or another dataset), or pass "
                        "--allow-train-overlap for an in-sample debug run")
    return kept, {"n_candidates": len(records), "excluded": n_hit, "n_eval": len(kept), "in_sample": False,
                  "status": "held out: prompts (and their twins) seen in training or calibration excluded"}
