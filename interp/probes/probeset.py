"""``ProbeSet``: one linear probe per layer, saved as safetensors (tensors) + JSON (everything else)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from interp import UserError, __version__
from interp.formatting import probability
from interp.probes.calibration import check_threshold, sigmoid

FORMAT_VERSION = 1
# Provenance keys that must agree between a ProbeSet and the store / model it is applied to.
def identity_mismatch(trained: Any, target: Any) -> str | None:
    """Why something made with provenance ``trained`` must not be used on ``target`` (``None`` when it may).

    Identity is by content: when both sides record a weights hash, the hashes decide (a copy of the same weights
    in another folder is the same model; new weights saved under the same path are not); otherwise the model ids
    must agree. The chat-template hash and the span ids must agree too. Ids are printed in full."""
    t, m = jsonable(dict(trained or {})), jsonable(dict(target or {}))
    if t.get("weights_sha256") and m.get("weights_sha256"):
        if t["weights_sha256"] != m["weights_sha256"]:
            return f"weights_sha256 {t['weights_sha256']} (this model: {m['weights_sha256']})"
    elif t.get("model_id") and m.get("model_id") and t["model_id"] != m["model_id"]:
        return f"model_id {t['model_id']!r} (this model: {m['model_id']!r})"
    for key in ("template_hash", "span_ids"):
        if t.get(key) is not None and m.get(key) is not None and t[key] != m[key]:
            return f"{key} {t[key]!r} (this template: {m[key]!r})"
    return None


def _threshold_line(cal: dict) -> str:
    """How the threshold was set: calibrated at a target FPR, or fixed (with the calibration answers' FPR at it)."""
    from interp.formatting import rate
    from interp.probes.calibration import fpr_bound_text

    if cal.get("fixed"):
        return (f"threshold {probability(cal['threshold'])}, fixed (not calibrated); per-answer FPR at it on the "
                f"{cal['n_answers']} benign answers from {cal['basis']}: {rate(cal['fpr_at_fixed'])}")
    bound = fpr_bound_text(cal)
    return (f"threshold {probability(cal['threshold'])}: per-answer target FPR {cal['target_fpr']} on "
            f"{cal['n_answers']} benign answers from {cal['basis']}" + ("" if cal["resolved"] else
                                                     f" (unresolved: finest FPR {cal['resolution']:.3f})")
            + (f"; {bound}" if bound else ""))


def jsonable(value: Any) -> Any:
    """Convert numpy / bytes values (e.g. HDF5 attributes) into plain JSON types."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _paths(path: str | Path) -> tuple[Path, Path]:
    """``x.json`` / ``x.safetensors`` name a prefix ``x``; anything else is a directory holding ``probeset.*``."""
    p = Path(path)
    p = p.with_suffix("") if p.suffix in (".json", ".safetensors") else p / "probeset"
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


@dataclass
class ProbeSet:
    """Linear probes per layer: ``logit = ((h - mean) / std) @ weights[l] + bias[l]``; score = sigmoid(logit).

    ``threshold`` applies to the score of ``best_layer`` or, for a multi-layer probe (``combine``), to the sigmoid of
    the mean of the ``combine`` layers' logits (:meth:`combined_score`): flag when score >= threshold (in float64,
    :func:`interp.probes.calibration.fires`). It is calibrated per answer for the guard ``schedule`` (its checks,
    rule and answer length) on the model's own answers to calibration prompts; ``split`` records which prompts trained and
    calibrated the set, so that evaluations can exclude them (:meth:`seen`).
    """

    layers: list[int]
    weights: np.ndarray  # [L, d]
    bias: np.ndarray  # [L]
    hook: str
    position: str | int
    best_layer: int
    threshold: float = 0.5
    mean: np.ndarray | None = None  # [L, d]
    std: np.ndarray | None = None  # [L, d]
    kind: str = "logreg"
    thresholds: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)  # role -> prompt keys, groups, counts (protocol)
    schedule: dict[str, Any] = field(default_factory=dict)  # guard schedule the threshold is calibrated for
    combine: list[int] = field(default_factory=list)  # a multi-layer probe: layers whose logits are averaged

    def __post_init__(self) -> None:
        self.layers = [int(v) for v in self.layers]
        self.weights = np.asarray(self.weights, np.float32)
        self.bias = np.asarray(self.bias, np.float32).reshape(len(self.layers))
        self.mean = None if self.mean is None else np.asarray(self.mean, np.float32)
        self.std = None if self.std is None else np.asarray(self.std, np.float32)
        if self.weights.shape[0] != len(self.layers):
            raise UserError("ProbeSet: weights rows must match layers")
        if self.best_layer not in self.layers:
            raise UserError(f"best layer {self.best_layer} is not among the probed layers {self.layers}")
        self.combine = sorted({int(v) for v in self.combine})
        if set(self.combine) - set(self.layers):
            raise UserError(f"multi-layer probe names layers {sorted(set(self.combine) - set(self.layers))} that the "
                            f"probe set has no probe for (it has {self.layers})")

    @property
    def readout(self) -> list[int]:
        """The layers the guard's score reads: the combined layers of a multi-layer probe, else the best layer."""
        return list(self.combine) or [self.best_layer]

    def _index(self, layer: int | None) -> int:
        layer = self.best_layer if layer is None else int(layer)
        if layer not in self.layers:
            raise UserError(f"no probe for layer {layer} (probed layers: {self.layers})")
        return self.layers.index(layer)

    def folded(self, layer: int | None = None) -> tuple[np.ndarray, float]:
        """Raw residual-basis ``(w [d], b)``: ``logit = h @ w + b`` (scaler folded in), float64."""
        i = self._index(layer)
        w = self.weights[i].astype(np.float64)
        b = float(self.bias[i])
        if self.std is not None:
            w = w / self.std[i].astype(np.float64)
        if self.mean is not None:
            b -= float(self.mean[i].astype(np.float64) @ w)
        return w, b

    def logit(self, hidden: torch.Tensor | np.ndarray, layer: int | None = None) -> torch.Tensor | np.ndarray:
        """Logit for ``hidden [..., d_model]`` → ``[...]`` (same type; torch keeps dtype and device)."""
        w, b = self.folded(layer)
        if isinstance(hidden, torch.Tensor):
            wt = torch.as_tensor(w, dtype=torch.float32, device=hidden.device)
            return (hidden.float() @ wt + b).to(hidden.dtype)
        return np.asarray(hidden, np.float64) @ w + b

    def score(self, hidden: torch.Tensor | np.ndarray, layer: int | None = None) -> torch.Tensor | np.ndarray:
        """Probability harmful for ``hidden [..., d_model]``, in float64 (a float32 probability saturates at a
        logit of about 17); ``layer`` None means the best layer."""
        z = self.logit(hidden, layer)
        if isinstance(z, torch.Tensor):
            return torch.sigmoid(z.double())
        return sigmoid(z)

    def combined_score(self, states: dict[int, torch.Tensor | np.ndarray]) -> torch.Tensor | np.ndarray:
        """The score ``threshold`` applies to: sigmoid of the mean over :attr:`readout` layers of each layer's
        probe logit, ``states[layer] [..., d_model]`` → ``[...]`` (one layer: exactly :meth:`score`)."""
        missing = [layer for layer in self.readout if layer not in states]
        if missing:
            raise UserError(f"the probe set reads layers {self.readout}; no activations given for {missing}")
        z = [self.logit(states[layer], layer) for layer in self.readout]
        if isinstance(z[0], torch.Tensor):
            return torch.sigmoid(torch.stack(z).double().mean(0))
        return sigmoid(np.mean(np.stack(z), 0))

    def seen(self):
        """The training and calibration prompts (:class:`~interp.probes.groups.SeenPrompts`: keys, pair ids, word
        fingerprints); None when the set records no split (made before the protocol, or by hand): its in-sample
        status is then unknown."""
        if not self.split:
            return None
        from interp.probes.protocol import seen_in

        return seen_in(self.split)

    def schedule_mismatch(self, guard_config) -> str | None:
        """A warning naming both sides when ``guard_config`` checks on another schedule, or answers at another
        length (``max_new_tokens``), than the threshold was calibrated for (a set that records no answer length
        is not compared on it)."""
        if not self.schedule:
            return None
        from interp.probes.protocol import Schedule

        mine, theirs = Schedule.from_dict(self.schedule), Schedule.of(guard_config)
        a, b = mine.to_dict(), theirs.to_dict()
        if a["answer_length"] is None:
            b["answer_length"] = None
        diff = {k: (v, b[k]) for k, v in a.items() if b[k] != v and k != "aggregation"}
        if not diff:
            return None
        hint = []
        if set(diff) - {"answer_length"}:
            hint.append("retrain with the same --stride/--early-checks/--check-at-start/--final-check/--aggregate/"
                        "--k-of-n/--window/--ema-alpha")
        if "answer_length" in diff:
            hint.append(f"run the guard with --max-new-tokens {a['answer_length']}, or extract and train at "
                        f"--answer-length {b['answer_length']}")
        names = {"answer_length": "answer length (max_new_tokens)"}
        return ("the probe threshold was calibrated per answer for another guard schedule ("
                + ", ".join(f"{names.get(k, k)}: calibrated {x}, running {y}" for k, (x, y) in diff.items())
                + "); its false-alarm rate per answer will differ: " + "; ".join(hint))

    @property
    def held_out(self):
        """The numbers on the test prompts as an :class:`interp.probes.heldout.HeldOutReport` (None without a test
        split)."""
        from interp.probes.heldout import HeldOutReport

        test = self.metrics.get("test")
        return None if not test else HeldOutReport.from_json(test)

    def summary(self) -> str:
        """What ``anydepth train`` prints: CV on the training prompts, the calibration, held-out test numbers."""
        from interp.formatting import ci

        best, cal, test = self.best_layer, self.thresholds["calibration"], self.metrics.get("test")
        sp = self.split
        lines = [f"split (prompt groups): train {len(sp['train']['groups'])}, calibration "
                 f"{len(sp['calibration']['groups'])}, test {len(sp['test']['groups'])}",
                 f"best layer {best}: grouped-CV AUROC on the training prompts "
                 f"{ci(self.metrics['cv_train'][str(best)]['auroc'])}"
                 + (f"; the guard reads a multi-layer probe at layers {self.combine}: "
                    f"{self.metrics.get('readout', {}).get('rule', 'mean of the logits')}" if self.combine else ""),
                 f"rule: {self.thresholds.get('rule', 'per answer (any check)')}", _threshold_line(cal)]
        if not test:
            return "\n".join([*lines, "no test split (--test-fraction 0): no held-out numbers"])
        return "\n".join([*lines, self.held_out.summary()])

    def direction(self, layer: int | None = None) -> np.ndarray:
        """Unit vector in the residual basis along which the logit grows (scaler folded in)."""
        w, _ = self.folded(layer)
        return (w / np.linalg.norm(w)).astype(np.float32)

    def to_sklearn(self, layer: int | None = None):
        """An in-memory scikit-learn ``LogisticRegression`` equivalent to one layer's probe on raw activations."""
        from sklearn.linear_model import LogisticRegression

        w, b = self.folded(layer)
        model = LogisticRegression()
        model.classes_ = np.array([0, 1])
        model.coef_ = w[None, :]
        model.intercept_ = np.array([b])
        model.n_features_in_ = len(w)
        model.n_iter_ = np.array([0])
        return model

    def check_provenance(self, expect: dict[str, Any]) -> None:
        """Raise ``UserError`` if ``expect`` (a store's or model's provenance) disagrees on model, weights,
        template, span ids or hook."""
        theirs = jsonable(dict(expect))
        why = identity_mismatch(self.provenance, theirs)
        if why:
            raise UserError(f"probe set was trained with {why}; retrain the probe for this model/template")
        if "hook" in theirs and theirs["hook"] != self.hook:
            raise UserError(f"probe set reads hook {self.hook!r} but the target uses {theirs['hook']!r}")
        if "hooks" in theirs and self.hook not in list(theirs["hooks"]):
            raise UserError(f"probe set reads hook {self.hook!r}, which the target does not record")

    def save(self, path: str | Path) -> Path:
        """Write ``<prefix>.safetensors`` + ``<prefix>.json`` (a directory gets ``probeset.*``); returns the JSON."""
        st_path, js_path = _paths(path)
        st_path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"weights": self.weights, "bias": self.bias,
                   "layers": np.asarray(self.layers, np.int64)}
        if self.mean is not None:
            tensors["mean"] = np.asarray(self.mean, np.float32)
        if self.std is not None:
            tensors["std"] = np.asarray(self.std, np.float32)
        meta = {"format_version": FORMAT_VERSION, "package_version": __version__, "kind": self.kind,
                "layers": self.layers, "hook": self.hook, "position": self.position,
                "best_layer": self.best_layer, "threshold": self.threshold, "thresholds": self.thresholds,
                "metrics": self.metrics, "provenance": self.provenance, "config": self.config,
                "split": self.split, "schedule": self.schedule, "combine": self.combine, "tensors": st_path.name}
        tmp_st, tmp_js = st_path.with_name(st_path.name + ".tmp"), js_path.with_name(js_path.name + ".tmp")
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp_st))
        tmp_js.write_text(json.dumps(jsonable(meta), indent=2, sort_keys=True) + "\n")
        os.replace(tmp_st, st_path)
        os.replace(tmp_js, js_path)
        return js_path

    @classmethod
    def load(cls, path: str | Path, *, expect_provenance: dict[str, Any] | None = None) -> ProbeSet:
        """Read a saved probe set; with ``expect_provenance`` refuse one trained on another model/template."""
        st_path, js_path = _paths(path)
        if not js_path.exists() or not st_path.exists():
            raise UserError(f"no probe set at {path} (expected {js_path} and {st_path})")
        try:
            meta = json.loads(js_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise UserError(f"{js_path} is damaged or truncated ({err}); retrain or restore the probe set") from err
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            got = meta.get("format_version") if isinstance(meta, dict) else type(meta).__name__
            raise UserError(f"{js_path}: unsupported probe-set format {got}")
        try:
            t = load_file(str(st_path))
        except Exception as err:  # safetensors raises its own error type for a damaged header or body
            raise UserError(f"{st_path} is damaged or truncated ({type(err).__name__}: {err}); retrain or restore "
                            "the probe set") from err
        missing = [k for k in ("layers", "weights", "bias") if k not in t]
        missing += [k for k in ("layers", "hook", "position", "best_layer", "threshold", "kind", "thresholds",
                                "metrics", "provenance", "config") if k not in meta]
        if missing:
            raise UserError(f"probe set {js_path.parent}: missing {', '.join(missing)}; retrain or restore it")
        if t["layers"].tolist() != meta["layers"]:
            raise UserError(f"{st_path} does not belong to {js_path} (layers differ)")
        if not all(np.isfinite(t[k]).all() for k in ("weights", "bias")):
            raise UserError(f"{st_path} holds non-finite probe weights; retrain the probe set")
        check_threshold(meta["threshold"], f"{js_path}: threshold")
        probes = cls(layers=meta["layers"], weights=t["weights"], bias=t["bias"], hook=meta["hook"],
                     position=meta["position"], best_layer=meta["best_layer"], threshold=meta["threshold"],
                     mean=t.get("mean"), std=t.get("std"), kind=meta["kind"], thresholds=meta["thresholds"],
                     metrics=meta["metrics"], provenance=meta["provenance"], config=meta["config"],
                     split=meta.get("split") or {}, schedule=meta.get("schedule") or {},
                     combine=meta.get("combine") or [])
        if expect_provenance is not None:
            probes.check_provenance(expect_provenance)
        return probes
