"""Recalibrate a trained probe set's threshold on more of the model's own benign answers.

A per-answer false-alarm target of 1% is set by the one or two highest of the calibration answers: with the 150
or so own answers a study's calibration split holds, the threshold's real rate on new answers lands anywhere
from 1% to 5%. More answers resolve it. :func:`recalibrate` takes a probe set and activation stores of the
same model and template (the set's own store and/or stores of new answers at the same answer length), scores
every answer as the deployed guard scores it (the set's readout, rule and checks: :mod:`interp.probes.answers`),
and assigns each answer a role by its prompt, never by its row:

* a prompt the set was **trained** on (the same prompt, its twin or a near duplicate, through its whole content
  group) is left out (``excluded``) and counted, and so is a group that links a calibration and a test prompt;
* a prompt of the set's **calibration** or **test** split keeps that role;
* every other prompt group is new: a seeded, label-stratified ``test_fraction`` of the new groups is held out for
  test, the rest joins the calibration answers;
* an answer that repeats an earlier one word for word (same prompt and text) is left out and counted, and a store
  given twice is refused, so that no answer counts twice.

The new threshold is set on the calibration prompts' benign answers of the set's calibration kinds (the model's
own answers, plain and after a forced opener) at ``target_fpr`` per answer; every rate is then measured on the
test answers, at the new threshold and, beside it, at the previous one. The saved probe set carries the new
threshold, the previous calibration, the new calibration prompts in its split record (so evaluations exclude
them) and this result.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from interp import UserError
from interp.formatting import ci, rate
from interp.probes.probeset import ProbeSet
from interp.results import Result

__all__ = ["RecalibrateConfig", "Recalibration", "recalibrate"]

ROLE_ORDER = ("excluded", "calibration", "test")


@dataclass
class RecalibrateConfig:
    """The probe set, the stores of answers and the target (``anydepth calibrate``)."""

    probeset: str = field(default="", metadata={"help": "the probe set to recalibrate (its folder or probeset.json)"})
    stores: list[str] = field(default_factory=list, metadata={
        "help": "activation stores of the same model and template, extracted at the probe set's answer length: "
                "its own store and/or stores of new answers (`anydepth corpus` + `anydepth extract`)"})
    target_fpr: float = field(default=0.01, metadata={"help": "per-answer false-alarm target on own benign answers"})
    test_fraction: float = field(default=0.5, metadata={
        "help": "share of the prompt groups new to the probe set held out to measure the new threshold"})
    seed: int = field(default=0, metadata={"help": "seed of the new groups' calibration / test assignment"})
    n_boot: int = field(default=200, metadata={"help": "bootstrap resamples (over prompt groups) for the AUROC CI"})
    out: str = field(default="", metadata={"help": "output folder: the recalibrated probe set and its report"})

    def validate(self) -> None:
        if not self.probeset:
            raise UserError("give --probeset PATH (a probe set from `anydepth train`)")
        if not self.stores:
            raise UserError("give --stores PATH [PATH ...]: activation stores of the model's own answers")
        if not 0 < self.target_fpr < 1:
            raise UserError(f"--target-fpr must be in (0, 1), got {self.target_fpr}")
        if not 0 <= self.test_fraction < 1:
            raise UserError(f"--test-fraction must be in [0, 1), got {self.test_fraction}")
        if self.n_boot < 0:
            raise UserError(f"--n-boot must be >= 0, got {self.n_boot}")


@dataclass
class Recalibration(Result):
    """A recalibrated threshold and what it does on held-out answers: the calibration record (answers, bounds on
    new answers and new prompts), rows per store and role, and on the test answers the per-answer rates at the new
    and the previous threshold (TPR on harmful, FPR on own benign, per source) and the per-answer AUROC."""

    kind = "recalibration"
    threshold: float
    previous_threshold: float
    target_fpr: float
    calibration: dict
    roles: dict[str, dict[str, int]]
    test: dict | None = None
    test_previous: dict | None = None
    auroc: dict | None = None
    stores: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    split_added: dict | None = field(default=None, repr=False)  # the new groups' split record (in the probe set)
    probes: ProbeSet | None = field(default=None, repr=False, compare=False)  # the recalibrated set

    def summary(self) -> str:
        from interp.probes.calibration import fpr_bound_text

        cal = self.calibration
        n = self.roles["total"]
        repeats = f"; {n['repeated']} repeat an earlier answer" if n.get("repeated") else ""
        lines = [f"answers: {n['excluded']} left out (their prompt groups trained the probe set{repeats}), {n['calibration']} "
                 f"calibration ({n['new_calibration']} new), {n['test']} test ({n['new_test']} new)",
                 f"threshold {self.threshold:.10g} (was {self.previous_threshold:.10g}): per-answer target FPR "
                 f"{self.target_fpr} on {cal['n_answers']} own benign calibration answers"
                 + ("" if cal["resolved"] else f" (unresolved: finest FPR {cal['resolution']:.3f})")
                 + (f"; {fpr_bound_text(cal)}" if fpr_bound_text(cal) else "")]
        if not self.test:
            return "\n".join([*lines, "no test answers: no held-out numbers (--test-fraction 0 and no test split)"])
        for name, r in (("new", self.test), ("previous", self.test_previous)):
            lines.append(f"held-out test per answer at the {name} threshold: TPR {rate(r['tpr'])}, FPR on own "
                         f"benign answers {rate(r['fpr'])}" + (f" (prompts with a false alarm "
                                                               f"{rate(r['fpr_prompts'])})" if r.get("fpr_prompts") else ""))
        by_source = ", ".join(f"{src} {r['k']}/{r['n']}" for src, r in self.test["fpr_by_source"].items()
                              if r["kind"] in self.calibration["kinds"])
        lines.append(f"false alarms at the new threshold by source: {by_source or '–'}")
        if self.auroc:
            lines.append(f"per-answer AUROC, own benign against harmful test answers: {ci(self.auroc)} "
                         f"({self.auroc['n_answers']} answers)")
        return "\n".join(lines)


@dataclass
class _Answers:
    """Every finished answer of the stores, concatenated: its deployed per-answer score (``scored``: NaN =
    excluded as incomplete) and what it is."""

    scored: object  # interp.probes.answers.AnswerScores
    y: np.ndarray
    kinds: np.ndarray
    sources: np.ndarray
    prompts: np.ndarray
    pair_ids: np.ndarray
    store: np.ndarray  # index into the stores
    responses: np.ndarray  # the answer's text ("" where its store keeps none)

    @property
    def score(self) -> np.ndarray:
        return self.scored.score


def _check_store(probes: ProbeSet, store, path: str, length: int | None) -> None:
    """One line when ``store`` cannot be scored as the set was calibrated: another model or template, another
    answer length than the set's ``length``, or without the hook or readout layers."""
    try:
        probes.check_provenance(store.provenance)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    have = getattr(store, "answer_length", None)
    if length is not None and have != length:
        raise UserError(f"{path}: answers extracted at --answer-length {have}, the probe set was calibrated for "
                        f"{length}; re-extract at --answer-length {length} (the deployed length)")
    missing = [layer for layer in probes.readout if layer not in list(store.layers)]
    if probes.hook not in list(store.hooks) or missing:
        raise UserError(f"{path}: the probe set reads {probes.hook} at layers {probes.readout}; the store holds "
                        f"{list(store.hooks)} at layers {list(store.layers)}: re-extract with --layers "
                        f"{','.join(map(str, probes.readout))}")


def _refuse_twice(stores: list) -> None:
    """One line when a store is given twice (by path, or a copy: the same example ids): its answers would count
    twice in the threshold and the rates."""
    seen: dict = {}
    for path, store in stores:
        for key in (("path", str(Path(path).resolve())), ("ids", store.provenance.get("example_ids_sha256"))):
            if key[1] is not None and key in seen:
                raise UserError(f"--stores: {path} repeats {seen[key]} (the same {'file' if key[0] == 'path' else 'examples'}); "
                                "give each store once")
            seen[key] = path


def _collect(probes: ProbeSet, stores: list, answer_length: int | None) -> tuple[_Answers, list[dict]]:
    """Every ``(path, store)`` checked against the set (calibrated at ``answer_length``) and scored; their answers
    concatenated."""
    from tqdm.auto import tqdm

    from interp.probes.answers import AnswerScores
    from interp.probes.data import require_finished
    from interp.probes.readout import deployed_answer_scores

    _refuse_twice(stores)
    parts, described = [], []
    for path, store in tqdm(stores, desc="score stores", unit="store", leave=False):
        _check_store(probes, store, path, answer_length)
        require_finished(store, False)
        parts.append(deployed_answer_scores(probes, store))
        described.append({"path": str(path), "rows": int(len(parts[-1][0].score)),
                          "example_ids_sha256": store.provenance.get("example_ids_sha256")})

    def cat(key: str, dtype=None) -> np.ndarray:
        return np.concatenate([np.asarray(m[key], dtype=dtype) for _, m in parts])

    scored = AnswerScores(*(np.concatenate([getattr(sc, k) for sc, _ in parts])
                            for k in ("score", "n_checks", "excluded")))
    responses = np.concatenate([np.asarray(m["response"], object) if "response" in m else
                                np.full(len(m["y"]), "", object) for _, m in parts])
    return _Answers(scored, cat("y"), cat("kinds").astype(str), cat("sources").astype(str),
                    cat("prompts").astype(str), cat("pair_ids", object),
                    np.concatenate([np.full(len(sc.score), i) for i, (sc, _) in enumerate(parts)]),
                    responses), described


def repeated_answers(prompts: np.ndarray, responses: np.ndarray) -> np.ndarray:
    """Answers whose prompt and text both appeared earlier (e.g. a pool built with a spec the study corpus already
    ran): left out, so that no answer counts twice. Answers without stored text are never called repeats."""
    from interp.probes.groups import prompt_key

    seen, out = set(), np.zeros(len(prompts), bool)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        if not r:
            continue
        key = (prompt_key(p), str(r))
        if key in seen:
            out[i] = True
        seen.add(key)
    return out


def assign_roles(probes: ProbeSet, prompts: np.ndarray, pair_ids: np.ndarray, y: np.ndarray, test_fraction: float,
                 seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each answer's role (``excluded``, ``calibration``, ``test``: module doc), its content group and whether
    the group is new to the set, over all the answers at once (a prompt in two stores is one group). New groups
    are split ``test_fraction`` test, stratified by the labels they hold."""
    from interp.probes.groups import content_groups
    from interp.probes.protocol import SplitConfig, seen_in, three_way_split
    from interp.stats import any_in_group, group_codes

    if not probes.split:
        raise UserError("the probe set records no split (made before the held-out protocol, or by hand): which "
                        "prompts trained it is unknown, so no answer can be called held out; retrain it with "
                        "`anydepth train`")
    groups = content_groups(list(prompts), list(pair_ids))
    codes, _ = group_codes(groups)
    keys = list(zip(prompts, pair_ids))
    touches = {}
    for name in ("train", "calibration", "test"):
        seen = seen_in(probes.split, (name,))
        known = {key: seen.why(*key) is not None for key in dict.fromkeys(keys)}  # once per distinct prompt
        hit = np.array([known[key] for key in keys], bool)
        touches[name] = any_in_group(hit, groups)[codes]
    role = np.where(touches["test"], "test", np.where(touches["calibration"], "calibration", "")).astype(object)
    role[touches["train"] | (touches["test"] & touches["calibration"])] = "excluded"
    new = role == ""
    if new.any():
        drawn = three_way_split(groups[new], y[new], SplitConfig(calib_fraction=0.0, test_fraction=test_fraction), seed)
        role[new] = np.where(drawn == "test", "test", "calibration")
    return role.astype(str), groups, new


def _role_counts(role: np.ndarray, store: np.ndarray, names: list[str], new: np.ndarray, repeat: np.ndarray
                 ) -> dict[str, dict[str, int]]:
    """Rows per role, per store and in total; ``new_*``: rows of prompt groups the set's split never held;
    ``repeated``: rows left out as repeats of an earlier answer (among the excluded)."""
    out = {}
    for i, name in enumerate([*names, "total"]):
        m = store == i if name != "total" else np.ones(len(role), bool)
        out[name] = {r: int((m & (role == r)).sum()) for r in ROLE_ORDER} | {"repeated": int((m & repeat).sum())} | {
            f"new_{r}": int((m & new & (role == r)).sum()) for r in ("calibration", "test")}
    return out


def _threshold(a: _Answers, cal: np.ndarray, groups: np.ndarray, target_fpr: float, answer_length) -> dict:
    """The per-answer threshold on the calibration answers of the calibration kinds, with its record."""
    from interp.probes.answers import require_complete_answers, warn_calibration
    from interp.probes.protocol import per_answer_threshold

    require_complete_answers(a.scored.excluded[cal], answer_length)
    calib = per_answer_threshold(a.score[cal], target_fpr, groups[cal])
    calib |= {"basis": "calibration prompts of the probe set's split and new prompt groups (never trained on)",
              "answers": a.scored.info(cal), "kinds": a.scored.by_kind(a.kinds, cal),
              "by_store": a.scored.by_kind(a.store.astype(str), cal)}
    warn_calibration(calib, calib["answers"]["excluded_incomplete"], answer_length, target_fpr)
    return calib


def _check_held_out(probes: ProbeSet, a: _Answers, role: np.ndarray) -> None:
    """Refuse test answers whose prompt trained or calibrated the set, or calibrates the new threshold."""
    from interp.probes.groups import SeenPrompts
    from interp.probes.protocol import assert_held_out, seen_in

    test, cal = role == "test", role == "calibration"
    prompts, pairs = list(a.prompts[test]), list(a.pair_ids[test])
    assert_held_out(prompts, pairs, seen_in(probes.split, ("train", "calibration")))
    assert_held_out(prompts, pairs, SeenPrompts.of(list(a.prompts[cal]), list(a.pair_ids[cal])))


def recalibrate_answers(probes: ProbeSet, stores: list, cfg: RecalibrateConfig) -> Recalibration:
    """:func:`recalibrate` on open stores, ``[(path, ActivationStore), ...]`` (module doc); nothing is written."""
    from interp.probes.answers import (
        CALIBRATION_KINDS,
        answer_auroc,
        calibration_rows,
        no_calibration_answers,
        rates,
    )
    from interp.probes.protocol import Schedule

    cfg.validate()
    if not probes.schedule:
        raise UserError("the probe set records no guard schedule (made before per-answer calibration): retrain it "
                        "with `anydepth train`")
    answer_length = Schedule.from_dict(probes.schedule).answer_length
    a, described = _collect(probes, stores, answer_length)
    role, groups, new = assign_roles(probes, a.prompts, a.pair_ids, a.y, cfg.test_fraction, cfg.seed)
    repeat = repeated_answers(a.prompts, a.responses)
    role = np.where(repeat, "excluded", role)
    calibrate_on = list(probes.thresholds.get("calibrate_on") or CALIBRATION_KINDS)
    own = calibration_rows(a.y, a.kinds, a.sources, calibrate_on)
    cal = own & (role == "calibration")
    if not cal.any():
        raise no_calibration_answers(calibrate_on, a.kinds[role == "calibration"], a.y[role == "calibration"])
    calib = _threshold(a, cal, groups, cfg.target_fpr, answer_length)
    result = Recalibration(threshold=calib["threshold"], previous_threshold=float(probes.threshold),
                           target_fpr=cfg.target_fpr, calibration=calib,
                           roles=_role_counts(role, a.store, [d["path"] for d in described], new, repeat),
                           stores=described,
                           config=dataclasses.asdict(cfg))
    test = role == "test"
    if test.any():
        _check_held_out(probes, a, role)
        args = (a.score[test], a.y[test], groups[test], a.sources[test], a.kinds[test])
        result.test = rates(*args, result.threshold, calibrate_on) | {"answers": a.scored.info(test)}
        result.test_previous = rates(*args, result.previous_threshold, calibrate_on)
        result.auroc = answer_auroc(a.score[test], a.y[test], groups[test], own[test], n_boot=cfg.n_boot, seed=cfg.seed)
    result.split_added = _split_added(role, groups, new, a)
    return result


def _split_added(role: np.ndarray, groups: np.ndarray, new: np.ndarray, a: _Answers) -> dict:
    """The split record (:func:`~interp.probes.protocol.describe_split`) of the new prompt groups' answers."""
    from interp.probes.protocol import describe_split

    return describe_split(role[new], groups[new], a.prompts[new], a.y[new], a.sources[new], a.pair_ids[new])


def _merge_split(split: dict, added: dict) -> dict:
    """``split`` with the new groups' calibration and test prompts added to those roles."""
    out = {k: dict(v) for k, v in split.items()}
    for name in ("calibration", "test"):
        old, more = out.get(name, {}), added[name]
        merged = {key: sorted(set(old.get(key, [])) | set(more[key])) for key in ("groups", "prompt_keys", "pair_ids")}
        merged["fingerprints"] = [list(f) for f in sorted({tuple(f) for f in [*old.get("fingerprints", []),
                                                                           *more["fingerprints"]]})]
        for key in ("n_rows", "n_harmful", "n_benign"):
            merged[key] = int(old.get(key, 0)) + int(more[key])
        sources = dict(old.get("sources", {}))
        for src, n in more["sources"].items():
            sources[src] = sources.get(src, 0) + n
        out[name] = {**old, **merged, "sources": sources}
    return out


def recalibrated_probeset(probes: ProbeSet, result: Recalibration) -> ProbeSet:
    """The probe set with ``result``'s threshold: its calibration record (the previous one kept beside it), the
    new prompts in its split, and its per-answer test numbers replaced by ``result``'s."""
    thresholds = {**probes.thresholds, "target_fpr": result.target_fpr, "calibration": result.calibration,
                  "recalibrated_from": {"threshold": result.previous_threshold,
                                        "target_fpr": probes.thresholds.get("target_fpr"),
                                        "calibration": probes.thresholds.get("calibration")}}
    metrics = {**probes.metrics, "recalibration": result.to_json()}
    if metrics.get("test"):
        test = dict(metrics["test"])
        test["per_depth"] = {name: [{k: v for k, v in row.items() if k != "tpr_at_threshold"} for row in rows]
                             for name, rows in test.get("per_depth", {}).items()}
        if result.test:
            test["per_answer"] = {"schedule": probes.schedule, **result.test, "auroc_own_vs_harmful": result.auroc}
        test["notes"] = [*test.get("notes", []), "recalibrated (anydepth calibrate): per-answer numbers at the new "
                         "threshold over the test answers of the recalibration's stores; the per-depth rates at the "
                         "previous threshold are dropped"]
        metrics["test"] = test
    split = _merge_split(probes.split, result.split_added) if result.split_added else probes.split
    return dataclasses.replace(probes, threshold=result.threshold, thresholds=thresholds, metrics=metrics, split=split)


def recalibrate(probeset: str | Path | ProbeSet | None = None, stores: list | None = None,
                cfg: RecalibrateConfig | None = None, *, out: str | Path | None = None) -> Recalibration:
    """Recalibrate ``probeset``'s threshold on the answers of ``stores`` (paths or open stores; defaults
    ``cfg.probeset`` / ``cfg.stores``) and measure it on held-out ones (module doc). With ``out`` (default
    ``cfg.out``) the recalibrated probe set, ``recalibration.json`` / ``.md`` and the config are written there;
    ``result.probes`` is the recalibrated set either way."""
    from contextlib import ExitStack

    from interp.config import save_config
    from interp.naming import check_out
    from interp.probes.stores import using_store

    cfg = dataclasses.replace(cfg or RecalibrateConfig())
    stores = list(stores if stores is not None else cfg.stores)
    cfg.stores = [str(getattr(s, "path", s)) for s in stores]
    if isinstance(probeset, ProbeSet):
        cfg.probeset = cfg.probeset or "<in memory>"
    elif probeset is not None:
        cfg.probeset = str(probeset)
    out = out if out is not None else (cfg.out or None)
    if out:
        check_out(out, "dir")
    cfg.validate()
    probes = probeset if isinstance(probeset, ProbeSet) else ProbeSet.load(cfg.probeset)
    with ExitStack() as stack:
        opened = [(str(getattr(s, "path", s)), stack.enter_context(using_store(s))) for s in stores]
        result = recalibrate_answers(probes, opened, cfg)
    result.probes = recalibrated_probeset(probes, result)
    if out:
        result.probes.save(Path(out))
        result.save(Path(out) / "recalibration.json")
        (Path(out) / "recalibration.md").write_text(result.summary() + "\n")
        save_config(cfg, Path(out) / "config.json")
    return result
