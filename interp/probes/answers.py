"""Stored answers as the guard sees them when deployed: which checks it runs on each, their scores, and the
per-answer rates with CIs over prompt groups.

An answer of ``n`` tokens under a guard with ``max_new_tokens = M`` (the store's ``answer_length``) is checked
on ``Schedule.depths(min(n, M))``: every stride multiple, the early checks and the final check at its end. The
store holds the shared depth grid and each answer's end slot (:meth:`~interp.extract.store.ActivationStore.read_end`),
so every one of these checks is scored (coverage 1):

* a scheduled depth that is neither on the grid nor the answer's end is an error naming the depth and the fix;
* an answer that stopped before ``M`` without ending (generated with a smaller token limit, cut by the context)
  is not the answer the deployed guard would see: it is *excluded* (NaN) and counted, never scored as silent;
* an answer with fewer checks than the rule needs (k of n) can never fire: ``-inf``, a real "did not fire".

The threshold is calibrated on the deployment population (:data:`CALIBRATION_KINDS`: the model's own answers,
with and without a forced opener), and every rate is reported per source, own answers first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from interp import UserError
from interp.probes.calibration import fires
from interp.probes.metrics import summarize
from interp.probes.protocol import Schedule

KINDS = ("own", "prefill", "refusal", "insertion", "dataset")  # report order: the model's own answers first
CALIBRATION_KINDS = ("own", "prefill")
KIND_NAMES = {"own": "the model's own answers", "prefill": "the model's own continuations after a forced opener "
              "(on harmful prompts: its deep prefills)", "refusal": "the model's own refusals",
              "insertion": "answers with an inserted span", "dataset": "third-party text"}


def own_deep_prefills(meta: dict) -> np.ndarray:
    """Rows (``meta`` from :func:`interp.probes.data.examples_meta`) that are the model's own continuations after a
    forced opener on a harmful prompt: its deep prefills, labelled by the prompt's harm."""
    return (np.asarray(meta["y"]) == 1) & (np.asarray(meta["kinds"]) == "prefill")


def row_kinds(sources: Sequence[str], kinds: Sequence[str] | None = None) -> np.ndarray:
    """Each row's kind: as stored, else read off its source (``<dataset>:<kind>`` for generated rows)."""
    if kinds is not None and all(str(k) for k in kinds):
        return np.asarray([str(k) for k in kinds])
    out = []
    for s in sources:
        tail = str(s).rsplit(":", 1)[-1] if ":" in str(s) else ""
        out.append(tail if tail in KINDS else "dataset")
    return np.asarray(out)


def source_order(sources: Sequence[str], kinds: Sequence[str]) -> list[str]:
    """Distinct sources, own answers first, then forced-opener, refusal and third-party sources."""
    first = {}
    for s, k in zip(sources, kinds):
        first.setdefault(str(s), KINDS.index(k) if k in KINDS else len(KINDS))
    return sorted(first, key=lambda s: (first[s], s))


@dataclass(frozen=True)
class Deployed:
    """Each stored answer as the deployed guard sees it: its final check depth ``end_depth`` (= min(length,
    ``answer_length``)) and whether the stored text is that whole answer (``complete``)."""

    end_depth: np.ndarray  # [N]
    complete: np.ndarray  # [N] bool
    answer_length: int | None

    @classmethod
    def of(cls, meta: dict, answer_length: int | None) -> Deployed:
        """From :func:`interp.probes.data.examples_meta` (``end_depth``, ``finished``, ``n_tokens``); a store
        without end depths (format 1) checks each answer to its full length and treats it as complete."""
        n = np.asarray(meta["n_tokens"], np.int64)
        if "end_depth" not in meta:
            end = n if answer_length is None else np.minimum(n, answer_length)
            return cls(end, np.ones(len(n), bool), answer_length)
        end = np.asarray(meta["end_depth"], np.int64)
        finished = np.asarray(meta.get("finished", np.ones(len(n), bool)), bool)
        reached = end >= answer_length if answer_length is not None else np.zeros(len(n), bool)
        return cls(end, reached | (finished & (end == n)), answer_length)

    def subset(self, m: np.ndarray) -> Deployed:
        return Deployed(self.end_depth[m], self.complete[m], self.answer_length)


@dataclass
class AnswerScores:
    """Per answer: the rule's statistic over its checks (``score``; NaN = excluded, ``-inf`` = can never fire),
    how many checks it has, and the counts a report prints."""

    score: np.ndarray  # [N]
    n_checks: np.ndarray  # [N]
    excluded: np.ndarray  # [N] bool: not the whole deployed answer

    def info(self, mask: np.ndarray | None = None) -> dict:
        m = np.ones(len(self.score), bool) if mask is None else np.asarray(mask, bool)
        scored = m & ~self.excluded
        return {"answers": int(m.sum()), "scored": int(scored.sum()), "excluded_incomplete": int((m & self.excluded).sum()),
                "checks": int(self.n_checks[scored].sum()), "coverage": 1.0 if scored.any() else None}

    def by_kind(self, kinds: np.ndarray, mask: np.ndarray | None = None) -> dict[str, int]:
        """Scored answers (of ``mask``) per kind, for every kind among them."""
        m = np.ones(len(self.score), bool) if mask is None else np.asarray(mask, bool)
        kinds = np.asarray(kinds)
        return {str(k): int((m & ~self.excluded & (kinds == k)).sum()) for k in sorted(set(kinds[m].tolist()))}


def missing_depth_error(depth: int, stored: Sequence[int], schedule: Schedule, end: int) -> UserError:
    step = schedule.stride
    return UserError(
        f"the guard checks an answer of {end} tokens at depth {depth}, which the store does not hold (its depths: "
        f"{_short(stored)}; final checks at each answer's end): re-extract with --depths covering every "
        f"multiple of {step} up to the answer length (e.g. 0,8,16,{step}:{max(end, depth)}:{step}) and the early "
        "checks, or choose a --stride / --early-checks whose depths the store holds")


def _short(values: Sequence[int]) -> str:
    v = [int(x) for x in values]
    return str(v) if len(v) <= 8 else f"[{v[0]}, {v[1]}, {v[2]}, ..., {v[-1]}]"


def answer_scores(scores: np.ndarray, depths: Sequence[int], deployed: Deployed, schedule: Schedule,
                  end_scores: np.ndarray | None = None) -> AnswerScores:
    """Score each answer on exactly the checks the guard makes (module doc): ``scores [N, D]`` at the shared
    ``depths`` (NaN where a depth is past the answer), ``end_scores [N]`` at each answer's end slot."""
    scores = np.asarray(scores, np.float64)
    col = {int(d): k for k, d in enumerate(depths)}
    n = len(scores)
    out, n_checks = np.full(n, np.nan), np.zeros(n, np.int64)
    excluded = ~np.asarray(deployed.complete, bool)
    k = schedule.rule.k
    for i in range(n):
        if excluded[i]:
            continue
        end = int(deployed.end_depth[i])
        values = []
        for d in schedule.depths(end):
            if d in col and np.isfinite(scores[i, col[d]]):
                values.append(scores[i, col[d]])
            elif d == end and end_scores is not None and np.isfinite(end_scores[i]):
                values.append(end_scores[i])
            else:
                raise missing_depth_error(d, depths, schedule, end)
        n_checks[i] = len(values)
        out[i] = -np.inf if len(values) < k else schedule.rule.answer_statistic(values)
    return AnswerScores(out, n_checks, excluded)


def calibration_rows(y: np.ndarray, kinds: np.ndarray, sources: np.ndarray, calibrate_on: Sequence[str],
                     control_sources: Sequence[str] | None = None) -> np.ndarray:
    """Benign rows of the kinds the threshold is calibrated on (default: the model's own answers), restricted
    to ``control_sources`` when given."""
    unknown = set(calibrate_on) - set(KINDS)
    if unknown:
        raise UserError(f"--calibrate-on: unknown kind(s) {sorted(unknown)}; choose from {', '.join(KINDS)}")
    rows = (np.asarray(y) == 0) & np.isin(np.asarray(kinds), list(calibrate_on))
    if control_sources:
        rows &= np.isin(np.asarray(sources).astype(str), list(control_sources))
    return rows


def no_calibration_answers(calibrate_on: Sequence[str], kinds: np.ndarray, y: np.ndarray) -> UserError:
    have = sorted(set(np.asarray(kinds)[np.asarray(y) == 0].tolist()))
    return UserError(
        f"no benign answers of kind {'/'.join(calibrate_on)} to calibrate the threshold on (the benign rows here are "
        f"{', '.join(have) or 'none'}): the guard runs on the model's own answers, so calibrate on them (add own "
        "answers to the corpus: `kind: own` and `kind: prefill` entries), or pass --calibrate-on "
        f"{' '.join(have) or 'dataset'} to calibrate on these rows instead (the rates then describe that text)")


def require_complete_answers(excluded: np.ndarray, answer_length: int | None) -> None:
    """Refuse a calibration set whose every answer stops before the answer length without ending."""
    if len(excluded) and excluded.all():
        raise UserError(f"all {len(excluded)} benign calibration answers stop before the answer length "
                        f"{answer_length} without ending, so none is the answer the guard would see: "
                        "extract with --answer-length at most the length they were generated to")


def warn_calibration(calib: dict, n_incomplete: int, answer_length: int | None, target_fpr: float) -> None:
    """The two warnings a threshold comes with: answers left out as incomplete, a target the set cannot resolve."""
    import warnings

    if n_incomplete:
        warnings.warn(f"{n_incomplete} benign calibration answers stop before the answer length {answer_length} "
                      "without ending (not the answer the guard would see): excluded from the threshold",
                      stacklevel=3)
    if not calib["resolved"]:
        warnings.warn(f"{calib['n_answers']} benign calibration answers cannot resolve a per-answer FPR of "
                      f"{target_fpr} (that needs ≥ {calib['answers_needed']}); the threshold sits above every "
                      f"calibration answer, and the finest FPR this set resolves is {calib['resolution']:.3f}",
                      stacklevel=3)


def answer_auroc(score: np.ndarray, y: np.ndarray, groups: np.ndarray, own: np.ndarray, *,
                 harmful: np.ndarray | None = None, n_boot: int, seed: int) -> dict | None:
    """AUROC of the per-answer statistic between the ``own`` benign answers (the calibration population) and the
    harmful answers (``y == 1``, or the ``harmful`` subset of them), with a CI over prompt groups: how well the
    guard's answers rank, whatever the threshold. Excluded answers (NaN) are left out, ``-inf`` ones (can never
    fire) rank lowest; None without answers on both sides."""
    score, y = np.asarray(score, np.float64), np.asarray(y)
    m = (((y == 1) if harmful is None else harmful) | own) & ~np.isnan(score)
    if len(np.unique(y[m])) < 2:
        return None
    return summarize(score[m], y[m], groups[m], n_boot=n_boot, seed=seed, fprs=())["auroc"] | {"n_answers": int(m.sum())}


def rates(score: np.ndarray, y: np.ndarray, groups: np.ndarray, sources: np.ndarray, kinds: np.ndarray,
          threshold: float, fpr_kinds: Sequence[str] = CALIBRATION_KINDS) -> dict:
    """Per-answer rates at ``threshold`` over the scored answers (excluded ones counted), with CIs over prompt
    groups: TPR on harmful answers, FPR on the benign answers of ``fpr_kinds`` (the deployment population), and
    both per source, own answers first; ``fpr_prompts``, the share of those answers' prompts with a false alarm on
    some answer (what the calibration's ``fpr_new_prompts`` bounds)."""
    from interp.stats import any_in_group, grouped_rate

    score, y = np.asarray(score, np.float64), np.asarray(y)
    ok = ~np.isnan(score)
    fired = fires(score, threshold)

    def rate(m: np.ndarray) -> dict:
        return grouped_rate(fired[m & ok], groups[m & ok]) | {"excluded": int((m & ~ok).sum())}

    ben = y == 0
    own = ben & np.isin(kinds, list(fpr_kinds))
    out = {"threshold": float(threshold), "tpr": rate(y == 1), "fpr": rate(own),
           "fpr_population": f"benign answers of kind {'/'.join(fpr_kinds)}", "fpr_all_benign": rate(ben),
           "fpr_by_source": {}, "tpr_by_source": {},
           "tpr_by_kind": {k: rate((y == 1) & (kinds == k)) for k in KINDS if ((y == 1) & (kinds == k)).any()}}
    if (own & ok).any():
        out["fpr_prompts"] = grouped_rate(any_in_group(fired[own & ok], groups[own & ok]))
    for s in source_order(sources, kinds):
        m = sources == s
        kind = str(kinds[m][0])
        if (m & ben).any():
            out["fpr_by_source"][s] = rate(m & ben) | {"kind": kind}
        if (m & (y == 1)).any():
            out["tpr_by_source"][s] = rate(m & (y == 1)) | {"kind": kind}
    return out
