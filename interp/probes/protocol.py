"""The held-out protocol: prompt identities, the train / calibration / test split, the guard's check schedule
and the per-answer threshold.

Every number the toolkit reports about a probe is measured on prompts the probe was neither trained nor
calibrated on. The pieces that make this hold by construction live here:

* :func:`prompt_key` / :func:`content_groups` (:mod:`interp.probes.groups`): a prompt's identity is a hash of
  its normalised text; a group is every row linked to it by the same prompt, a shared twin pair id or a near
  duplicate (transitively), so copies never land on two sides of a split.
* :func:`three_way_split`: groups → ``train`` (fit, layer choice), ``calibration`` (only the threshold) and
  ``test`` (only reported numbers), stratified by the labels a group holds.
* :class:`Schedule`: the depths at which the guard checks an answer of ``n`` tokens (stride, early checks,
  depth 0, final check) and the aggregation rule that makes it fire (:mod:`interp.guard.aggregate`: any check,
  k of the last n, an EMA); :mod:`interp.probes.answers` scores each stored answer on exactly these checks.
* :func:`per_answer_threshold`: the threshold at which at most ``target_fpr`` of the calibration benign *answers*
  fire at least once, with the resolution the calibration set allows.
* :func:`assert_held_out`: refuses to report a rate on prompts that trained or calibrated the probe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from interp import UserError
from interp.guard.aggregate import AggregateConfig, Aggregation
from interp.probes.groups import SeenPrompts, content_groups, normalise_prompt, prompt_key  # noqa: F401
from interp.stats import any_in_group

ROLES = ("train", "calibration", "test")


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


def three_way_split(groups: np.ndarray, y: np.ndarray, cfg: SplitConfig, seed: int = 0,
                    strata: np.ndarray | None = None) -> np.ndarray:
    """Role per row (``"train" | "calibration" | "test"``): whole groups are assigned, stratified by which labels
    a group holds (harmful only, benign only, both) and, with ``strata`` (a tag per row, e.g. "the model's own
    benign answer"), by which tags it holds, so each role gets its share of each kind."""
    cfg.validate()
    groups, y = np.asarray(groups).astype(str), np.asarray(y)
    names, codes = np.unique(groups, return_inverse=True)
    has_h, has_b = any_in_group(y == 1, groups), any_in_group(y == 0, groups)  # in the order of names
    kind = (has_h.astype(int) + 2 * has_b.astype(int)).astype(object)
    if strata is not None:
        tags: dict[int, set] = {}
        for c, t in zip(codes, np.asarray(strata).astype(str)):
            tags.setdefault(int(c), set()).add(t)
        kind = np.array([f"{k}|{','.join(sorted(tags[i]))}" for i, k in enumerate(kind)], dtype=object)
    role = np.full(len(names), "train", dtype=object)
    rng = np.random.default_rng(seed)
    for k in sorted(set(kind.tolist()), key=str):
        members = rng.permutation(np.nonzero(kind == k)[0])
        n_test = int(round(cfg.test_fraction * len(members)))
        n_cal = int(round(cfg.calib_fraction * len(members)))
        role[members[:n_test]] = "test"
        role[members[n_test:n_test + n_cal]] = "calibration"
    return role[codes].astype(str)


def assign_split(meta: dict, cfg: SplitConfig, own_benign: np.ndarray, train_only: np.ndarray,
                 seed: int = 0) -> np.ndarray:
    """Each finished row's role: the three-way split of the rows outside ``train_only`` (computed on them alone,
    so it is the split their store gets without the added rows), ``train`` for the ``train_only`` rows, and
    ``leak`` for those whose content group (over all rows) holds a calibration or test row."""
    main = ~train_only
    groups = meta["groups"][main]
    if train_only.any() and all(len(str(p)) for p in meta["prompts"]):  # as the main store alone would group them
        groups = content_groups(list(meta["prompts"][main]), list(meta["pair_ids"][main]))
    roles = np.full(len(main), "train", dtype=object)
    roles[main] = three_way_split(groups, meta["y"][main], cfg, seed,
                                  strata=np.where(own_benign[main], "calibration-kind", "other"))
    if train_only.any():
        held = np.isin(meta["groups"], meta["groups"][main & (roles != "train")])
        roles[train_only & held] = "leak"
    return roles.astype(str)


def describe_split(roles: np.ndarray, groups: np.ndarray, prompts: np.ndarray, y: np.ndarray,
                   sources: np.ndarray, pair_ids: np.ndarray | None = None) -> dict:
    """JSON record of a split: per role the prompt keys, content groups, pair ids, word fingerprints of the
    prompts (for near-duplicate exclusion, :class:`~interp.probes.groups.SeenPrompts`), row counts by label and
    by source."""
    out = {}
    pair_ids = np.array([""] * len(roles), dtype=object) if pair_ids is None else np.asarray(pair_ids)
    for role in ROLES:
        m = np.asarray(roles) == role
        src, cnt = np.unique(np.asarray(sources)[m].astype(str), return_counts=True)
        seen = SeenPrompts.of(list(np.asarray(prompts)[m]), list(pair_ids[m]))
        out[role] = {"n_rows": int(m.sum()), "n_harmful": int((np.asarray(y)[m] == 1).sum()),
                     "n_benign": int((np.asarray(y)[m] == 0).sum()),
                     "groups": sorted(set(np.asarray(groups)[m].astype(str).tolist())),
                     "prompt_keys": sorted(seen.keys), "pair_ids": sorted(seen.pair_ids),
                     "fingerprints": sorted(sorted(f) for f in seen.fingerprints),
                     "sources": {str(s): int(c) for s, c in zip(src, cnt)}}
    return out


def seen_in(split: dict, roles: Sequence[str] = ("train", "calibration")) -> SeenPrompts:
    """The prompts of ``roles`` in a split record (:func:`describe_split`). Records written before content
    groups name pair ids only inside their groups (``pair:<id>``)."""
    from interp.probes.groups import NEAR_DUPLICATE_JACCARD

    keys, pairs, prints = set(), set(), []
    for role in roles:
        part = split.get(role) or {}
        keys.update(part.get("prompt_keys", []))
        pairs.update(str(p) for p in part.get("pair_ids", []))
        pairs.update(g.removeprefix("pair:") for g in part.get("groups", []) if str(g).startswith("pair:"))
        prints.extend(frozenset(int(x) for x in f) for f in part.get("fingerprints", []))
    return SeenPrompts(keys, pairs, prints, NEAR_DUPLICATE_JACCARD)


def check_schedule(cfg) -> None:
    """One-line errors for a guard schedule (stride, early checks, aggregation rule) that cannot run (shared by
    the guard's, train's and evaluate's options)."""
    if cfg.stride < 1:
        raise UserError(f"--stride must be >= 1, got {cfg.stride}")
    if any(d < 1 for d in cfg.early_checks):
        raise UserError(f"--early-checks depths must be >= 1, got {list(cfg.early_checks)}")
    Aggregation.of(cfg)


@dataclass
class ScheduleConfig(AggregateConfig):
    """The guard schedule a threshold is calibrated for and per-answer rates are counted on (use the same options
    with ``anydepth guard`` / ``evaluate``; the answer length comes from the store's ``answer_length``)."""

    stride: int = field(default=25, metadata={"help": "guard check stride the threshold is calibrated for"})
    early_checks: list[int] = field(default_factory=list, metadata={"help": "guard's extra early check depths"})
    check_at_start: bool = field(default=False, metadata={"help": "the guard also checks at depth 0"})
    final_check: bool = field(default=True, metadata={"help": "the guard checks an answer's unchecked tail"})

    def schedule(self, answer_length: int | None = None) -> Schedule:
        return Schedule.of(self, answer_length)


@dataclass(frozen=True)
class Schedule:
    """When the guard checks an answer: every ``stride`` tokens, at ``early_checks``, at depth 0 if
    ``check_at_start``, and at the answer's end if ``final_check`` and the end was not checked already; an answer
    ends by itself or at ``answer_length`` tokens (the guard's ``max_new_tokens``; None: not recorded). The guard
    fires on an answer when its aggregation ``rule`` fires (:mod:`interp.guard.aggregate`; default: any check)."""

    stride: int = 25
    early_checks: tuple[int, ...] = ()
    check_at_start: bool = False
    final_check: bool = True
    rule: Aggregation = Aggregation()
    answer_length: int | None = None

    @property
    def aggregation(self) -> str:
        return self.rule.describe()

    @classmethod
    def of(cls, cfg, answer_length: int | None = None) -> Schedule:
        """The schedule of a :class:`interp.guard.types.GuardConfig` (its ``max_new_tokens`` is the answer length)
        or of any object with the same fields (then ``answer_length`` says it)."""
        length = answer_length if answer_length is not None else getattr(cfg, "max_new_tokens", None)
        return cls(int(cfg.stride), tuple(sorted(int(d) for d in cfg.early_checks)), bool(cfg.check_at_start),
                   bool(cfg.final_check), Aggregation.of(cfg), None if length is None else int(length))

    @classmethod
    def from_dict(cls, d: dict) -> Schedule:
        if "aggregate" in d:
            rule = Aggregation.from_dict(d["aggregate"])
        elif int(d.get("k_of_n", 1)) == 1:  # saved before the aggregation options: the single-check rule
            rule = Aggregation()
        else:
            raise UserError(f"this probe set was calibrated for the unwindowed {d['k_of_n']}-of-n rule of an earlier "
                            "version; retrain it with --aggregate k_of_n --k-of-n K --window N")
        length = d.get("answer_length")
        return cls(int(d["stride"]), tuple(int(x) for x in d.get("early_checks", ())),
                   bool(d.get("check_at_start", False)), bool(d.get("final_check", True)), rule,
                   None if length is None else int(length))

    def to_dict(self) -> dict:
        return {"stride": self.stride, "early_checks": list(self.early_checks), "check_at_start": self.check_at_start,
                "final_check": self.final_check, "aggregate": self.rule.to_dict(), "aggregation": self.aggregation,
                "answer_length": self.answer_length}

    def depths(self, n_tokens: int) -> list[int]:
        """Depths checked on an answer of ``n_tokens`` generated tokens (cut at ``answer_length``), ascending."""
        n = int(n_tokens) if self.answer_length is None else min(int(n_tokens), self.answer_length)
        out = set(range(self.stride, n + 1, self.stride)) | {d for d in self.early_checks if 1 <= d <= n}
        if self.check_at_start:
            out.add(0)
        if self.final_check and n > 0 and n not in out:
            out.add(n)
        return sorted(out)


def per_answer_threshold(benign_answer_scores: np.ndarray, target_fpr: float, groups: np.ndarray | None = None
                         ) -> dict:
    """Threshold at which at most ``target_fpr`` of these benign answers fire
    (:func:`~interp.probes.calibration.fires`). NaN answers (excluded: not scorable as deployed) are left out;
    ``-inf`` answers (too short for the rule ever to fire) count as answers that never fire.

    With fewer than ``1 / target_fpr`` answers the target cannot be resolved: the threshold then sits above
    every calibration answer (0 of n fire), ``resolved`` is False and ``resolution`` (= 1/n) is the smallest
    false-alarm rate the set can tell apart from zero. ``fpr_new_answers`` is what the threshold promises for new
    answers (:func:`~interp.probes.calibration.threshold_fpr_bound`): 1 of 151 answers firing at a 1% target means
    at most 1.3% on average, and at most 3.1% with 95% confidence. Answers of one prompt are correlated, so with
    ``groups`` (each answer's prompt group) ``fpr_new_prompts`` gives the same bound with prompts as the units: the
    share of new benign prompts on which some answer fires.
    """
    from interp.probes.calibration import fires, threshold_at_fpr, threshold_fpr_bound

    s = np.asarray(benign_answer_scores, np.float64)
    kept = ~np.isnan(s)
    s = s[kept]
    if len(s) == 0:
        raise UserError("no benign calibration answers to set the threshold on")
    thr = threshold_at_fpr(s, target_fpr)
    need = int(np.ceil(1 / target_fpr - 1e-9)) if target_fpr > 0 else None
    fired = fires(s, thr)
    # no rate on these answers is returned: they chose the threshold, so their FPR is ≤ target by construction;
    # what they do tell is the FPR to expect on new answers, and how high it may be
    out = {"threshold": thr, "target_fpr": target_fpr, "n_answers": int(len(s)),
           "resolution": 1.0 / len(s), "resolved": need is not None and len(s) >= need, "answers_needed": need,
           "fpr_new_answers": threshold_fpr_bound(len(s), int(fired.sum()))}
    if groups is not None:
        prompt_fired = any_in_group(fired, np.asarray(groups)[kept])
        if not prompt_fired.all():
            out["fpr_new_prompts"] = (threshold_fpr_bound(len(prompt_fired), int(prompt_fired.sum()))
                                      | {"n_prompts": len(prompt_fired)})
    return out


def assert_held_out(test_prompts: Sequence[str], test_pairs: Sequence | None, seen: SeenPrompts,
                     what: str = "test prompts") -> None:
    """Refuse to report a held-out rate on prompts that trained or calibrated the probe (the same prompt, its
    twin, or a near duplicate): checked on the prompts themselves, not on the split's own group labels."""
    pairs = test_pairs if test_pairs is not None else [None] * len(test_prompts)
    for prompt, pair in zip(test_prompts, pairs):
        why = seen.why(prompt, pair)
        if why:
            raise UserError(f"{what}: {prompt[:60]!r} was also used for calibration/training (same {why}); "
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
    hit = [seen.why(r.prompt, (r.meta or {}).get("pair_id")) is not None for _, r in records]
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
