"""The guard's checks over a live KV cache: ADA-LP (probe), ADA-RK (re-inject + refusal), base lookahead.

Each check forwards over the caller's cache and rolls it back exactly with :mod:`interp.model.kvcache`.
The probe layer (every layer of a multi-layer probe) is read through one hook per layer registered at
construction (armed only during a check); early exit raises a private exception from the deepest of them, so the
layers after the last layer read never run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from interp import UserError
from interp.extract.masks import attention_layout, piggyback_inputs, span_over_cache
from interp.generate.decode import greedy
from interp.guard.aggregate import FLAG_THRESHOLD
from interp.guard.openers import head_logits, tree_log_probs
from interp.guard.refusal import KeywordMatcher, ProbabilityMatcher
from interp.guard.types import CheckEvent
from interp.model import hooks as mh
from interp.model.context import text_config
from interp.model.kvcache import cache_kwarg, mark, rollback, sliding_windows


def _get(obj: Any, key: str, default=None):
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def hook_kind(hook: str) -> str:
    """``resid_post``, ``resid_pre`` or ``ln1`` (the block's normalised input, ADA's readout) for a
    TransformerLens-style hook name; anything else is refused."""
    for kind in ("resid_post", "resid_pre", "ln1"):
        if kind in str(hook):
            return kind
    raise UserError(f"probe hook {hook!r} is not one the guard reads (hook_resid_pre, hook_resid_post or "
                    "ln1.hook_normalized)")


@dataclass
class CheckOutcome:
    """Per-detector results of one check over a batch."""

    flags: dict[str, torch.Tensor] = field(default_factory=dict)  # detector -> [B] bool
    scores: dict[str, torch.Tensor] = field(default_factory=dict)  # detector -> [B] float
    texts: dict[str, list[str]] = field(default_factory=dict)  # detector -> B lookahead texts

    limits: dict[str, float] = field(default_factory=dict)  # detector -> threshold its score is flagged at

    def flagged(self, b: int) -> bool:
        return any(bool(f[b]) for f in self.flags.values())

    def value(self, name: str, b: int) -> tuple[float, float]:
        """``(value, threshold)`` the aggregation rule sees for row ``b``: the score and the threshold it is
        flagged at, or the flag as 1.0 / 0.0 against 0.5 for a detector flagged by something else (keywords)."""
        if name in self.limits:
            return float(self.scores[name][b]), self.limits[name]
        return float(bool(self.flags[name][b])), FLAG_THRESHOLD

    def events(self, b: int, depth: int) -> list:
        out = []
        for name, f in self.flags.items():
            score = self.scores.get(name)
            text = self.texts.get(name)
            out.append(CheckEvent(depth=depth, flagged=bool(f[b]), detector=name,
                                  score=None if score is None else float(score[b]),
                                  lookahead=None if text is None else text[b]))
        return out


class Checker:
    """Runs checks over a cache; validates the probe set against the model and the spans."""

    def __init__(self, model, tokenizer, spans, config, probes=None, *, model_id: str | None = None,
                 weights_sha256: str | None = None, base_lookahead: int | None = None, prob_scores: bool = False):
        """``prob_scores``: also score every base / RK check with the probability judge (for reports; costs one
        forward of the opener tree per check); ``--matcher prob`` always does."""
        self.model, self.tokenizer, self.spans, self.config = model, tokenizer, spans, config
        self.base = mh.body(model)
        self._kw_model, self._kw_base = cache_kwarg(model), cache_kwarg(self.base)
        self.span_ids = [int(t) for t in spans.span_ids]
        self.probe_ids = self.span_ids[: int(spans.probe_index) + 1]
        self.base_lookahead = base_lookahead or config.lookahead
        self.room = len(self.span_ids) + max(config.lookahead, self.base_lookahead)
        self.window, self.layer_types = attention_layout(model.config)
        self.dtype = next(model.parameters()).dtype
        self.keyword = KeywordMatcher(getattr(model.config, "model_type", "default"))
        self.prob = ProbabilityMatcher(tokenizer, config.refusal_prob)
        self.prob_scores = bool(prob_scores) or config.matcher == "prob"
        self.probes, self.tap, self.taps, self.layer, self.layers = probes, None, [], None, []
        if probes is not None:
            self._attach_probes(probes, model_id, weights_sha256)

    # -- probe set -------------------------------------------------------------------------------
    def _attach_probes(self, probes, model_id, weights_sha256) -> None:
        from interp.probes.probeset import identity_mismatch

        prov = _get(probes, "provenance", {}) or {}
        why = identity_mismatch(prov, {"model_id": model_id, "weights_sha256": weights_sha256,
                                       "template_hash": _get(self.spans, "template_hash")})
        if why:
            raise UserError(f"probe set was trained with {why}; train probes for this model (anydepth train)")
        their_span = _get(prov, "span_ids")
        if their_span is not None and [int(t) for t in their_span] != self.span_ids:
            raise UserError(f"probe set span {list(their_span)} differs from this template's span {self.span_ids}")
        kind = hook_kind(_get(prov, "hook") or _get(probes, "hook") or "")
        position = _get(probes, "position", "probe")
        if position not in ("probe", None) and str(position) != str(self.spans.probe_index):
            raise UserError(f"probe set reads span position {position!r}, but the guard reads the probe token "
                            f"(span position {self.spans.probe_index}); train it with --position probe")
        weights = _get(probes, "weights")
        cfg = text_config(self.model)
        if weights is not None and getattr(cfg, "hidden_size", None) not in (None, weights.shape[-1]):
            raise UserError(f"probe set has {weights.shape[-1]}-dimensional probes but the model's hidden size is "
                            f"{cfg.hidden_size}: it was trained on another model; train probes for this one")
        n_layers = mh.n_layers(self.model)
        fixed = self.config.probe_layer
        readout = [fixed] if fixed is not None else (_get(probes, "combine") or [_get(probes, "best_layer")])
        have = _get(probes, "layers")
        for layer in readout:
            if layer is None or not 0 <= int(layer) < n_layers:
                raise UserError(f"probe layer {layer} is outside the model's {n_layers} layers (0..{n_layers - 1})")
            if have is not None and int(layer) not in [int(x) for x in have]:
                raise UserError(f"probe set has no probe for layer {layer}; it has layers {list(have)}")
        self.layers = sorted(int(x) for x in readout)  # every layer the check reads (a multi-layer probe: several)
        self.layer = self.layers[-1]  # the deepest: early exit stops the forward after it
        self.threshold = float(self.config.threshold if self.config.threshold is not None
                               else _get(probes, "threshold", 0.5))
        site = {"resid_pre": mh.resid_pre, "resid_post": mh.resid_post, "ln1": mh.ln1}[kind]
        self.taps = [mh.Tap(self.model, site(layer)) for layer in self.layers]
        self.tap = self.taps[-1]

    def close(self) -> None:
        for tap in self.taps:
            tap.remove()
        self.tap, self.taps = None, []

    def _arm(self, index: int, stop: bool = False) -> None:
        for tap in self.taps:
            tap.arm(index, stop=stop and tap is self.tap)  # only the deepest read layer may stop the forward

    def _disarm(self) -> None:
        for tap in self.taps:
            tap.armed = False

    def _states(self) -> torch.Tensor:
        """What the taps read: ``[B, d]`` for one layer, ``[B, L, d]`` (layers ascending) for a multi-layer probe."""
        if len(self.taps) == 1:
            return self.tap.value
        return torch.stack([tap.value for tap in self.taps], dim=1)

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        """Probe score per row of :meth:`lp_hidden`'s states (the combined score of a multi-layer probe)."""
        if hidden.dim() == 2:
            out = self.probes.score(hidden.float(), layer=self.layer)
        else:
            out = self.probes.combined_score({layer: hidden[:, i].float() for i, layer in enumerate(self.layers)})
        return torch.as_tensor(out, dtype=torch.float64).reshape(-1).cpu()

    # -- checks ----------------------------------------------------------------------------------
    def lp_hidden(self, cache, mask: torch.Tensor, pos_next: torch.Tensor) -> torch.Tensor:
        """Probe-layer state(s) at the role token, forwarded over ``cache`` (rolled back afterwards): ``[B, d]``, or
        ``[B, L, d]`` for a multi-layer probe; early exit stops after the deepest layer read."""
        ids, pos, full = span_over_cache(self.probe_ids, mask, pos_next)
        before = mark(cache)
        self._arm(-1, stop=self.config.early_exit)
        try:
            mh.forward_until_stop(self.base, input_ids=ids, position_ids=pos, attention_mask=full, use_cache=True,
                                  **{self._kw_base: cache})
        finally:
            self._disarm()
            rollback(cache, before)
        return self._states()

    def _lookahead(self, cache, mask, pos_next, first_logits, n_tokens: int) -> list[str]:
        """Greedy ``n_tokens`` from ``first_logits`` over the cache (the caller rolls back)."""
        tok = greedy(first_logits)
        out, B, dev = [tok], mask.shape[0], mask.device
        eos = self.tokenizer.eos_token_id
        for i in range(n_tokens - 1):
            if eos is not None and all(bool((t == eos).any()) for t in torch.stack(out, 1)):
                break
            mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=dev)], dim=1)
            logits = self.model(input_ids=tok[:, None], position_ids=(pos_next + i)[:, None], attention_mask=mask,
                                use_cache=True, logits_to_keep=1, **{self._kw_model: cache}).logits[:, -1]
            tok = greedy(logits)
            out.append(tok)
        toks = torch.stack(out, 1).tolist()
        texts = []
        for row in toks:
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            texts.append(self.tokenizer.decode(row, skip_special_tokens=True))
        return texts

    def _rk(self, cache, mask, pos_next, outcome: CheckOutcome) -> None:
        ids, pos, full = span_over_cache(self.span_ids, mask, pos_next)
        before = mark(cache)
        try:
            logits = self.model(input_ids=ids, position_ids=pos, attention_mask=full, use_cache=True,
                                logits_to_keep=1, **{self._kw_model: cache}).logits[:, -1]
            after_span = pos_next + len(self.span_ids)
            mass = self.prob.mass_over_cache(self.model, cache, full, after_span, logits) if self.prob_scores else None
            if self.config.matcher == "prob":
                outcome.flags["rk"], outcome.scores["rk"] = mass >= self.prob.threshold, mass
                outcome.limits["rk"] = self.prob.threshold
            else:
                texts = self._lookahead(cache, full, after_span, logits, self.config.lookahead)
                outcome.flags["rk"] = torch.tensor([self.keyword(t) for t in texts])
                outcome.texts["rk"] = texts
                if mass is not None:
                    outcome.scores["rk"] = mass  # the probability judge, for reports
        finally:
            rollback(cache, before)

    def run(self, cache, mask: torch.Tensor, pos_next: torch.Tensor, detectors, last_logits=None) -> CheckOutcome:
        """Check every row at the cache's current depth with each detector (cache unchanged afterwards)."""
        outcome = CheckOutcome()
        for name in detectors:
            if name == "lp":
                scores = self.score(self.lp_hidden(cache, mask, pos_next))
                outcome.flags["lp"], outcome.scores["lp"] = scores >= self.threshold, scores
                outcome.limits["lp"] = self.threshold
            elif name == "rk":
                self._rk(cache, mask, pos_next, outcome)
            elif name == "base":
                if last_logits is None:
                    raise ValueError("the base detector needs the current next-token logits")
                before = mark(cache)
                try:
                    texts = self._lookahead(cache, mask, pos_next, last_logits, self.base_lookahead)
                finally:
                    rollback(cache, before)
                outcome.flags["base"] = torch.tensor([self.keyword(t) for t in texts])
                if self.prob_scores:  # the probability judge, for reports
                    outcome.scores["base"] = self.prob.mass_over_cache(self.model, cache, mask, pos_next, last_logits)
                outcome.texts["base"] = texts
            else:
                raise ValueError(f"unknown detector {name!r}")
        return outcome

    def _decode_after_check(self, cache, mask: torch.Tensor, pos_next: torch.Tensor, next_tokens: torch.Tensor):
        """The RK check and then the decode step as two forwards: what :meth:`piggyback` does in one, for a model
        whose sliding window is too short to roll the opener tree back out of a kept decode step."""
        outcome = CheckOutcome()
        self._rk(cache, mask, pos_next, outcome)
        step = torch.cat([mask, torch.ones((mask.shape[0], 1), dtype=mask.dtype, device=mask.device)], dim=1)
        logits = self.model(input_ids=next_tokens[:, None], position_ids=pos_next[:, None], attention_mask=step,
                            use_cache=True, logits_to_keep=1, **{self._kw_model: cache}).logits[:, -1]
        return logits, outcome

    def piggyback(self, cache, mask: torch.Tensor, pos_next: torch.Tensor, next_tokens: torch.Tensor, detectors):
        """Decode ``next_tokens`` and check the current depth in one forward; returns ``(logits, outcome)``. For RK
        (probability judge) the opener tree rides behind the span in the same forward."""
        if list(detectors) not in (["lp"], ["rk"]):
            raise ValueError(f"piggyback supports one detector, lp or rk (prob), got {list(detectors)}")
        name = detectors[0]
        span = self.probe_ids if name == "lp" else self.span_ids
        tree = self.prob.tree if name == "rk" else None
        if tree is not None and any(w is not None and 1 + len(span) + len(tree.tokens) >= w
                                    for w in sliding_windows(cache)):
            return self._decode_after_check(cache, mask, pos_next, next_tokens)  # the forest outgrows a window
        n = mask.shape[1]
        ids, pos, m4 = piggyback_inputs(next_tokens, span, n, dtype=self.dtype, prefix_mask=mask,
                                        positions=pos_next, sliding_window=self.window,
                                        layer_types=self.layer_types, device=mask.device,
                                        tree=None if tree is None else (tree.tokens, tree.parents))
        before = mark(cache)
        outcome = CheckOutcome()
        if name == "lp":
            self._arm(len(span))
        try:
            if name == "lp":
                logits = self.model(input_ids=ids, position_ids=pos, attention_mask=m4, use_cache=True,
                                    logits_to_keep=torch.tensor([0], device=mask.device),
                                    **{self._kw_model: cache}).logits[:, 0]
            else:  # the decode token, the span's end (first opener token) and the tree, from the final states
                hidden = self.base(input_ids=ids, position_ids=pos, attention_mask=m4, use_cache=True,
                                   **{self._kw_base: cache}).last_hidden_state
                logits = head_logits(self.model, hidden[:, 0])
                first = torch.log_softmax(head_logits(self.model, hidden[:, len(span)]), dim=-1)
                nodes = tree_log_probs(self.model, hidden[:, 1 + len(span):], tree) if tree.tokens else None
        finally:
            self._disarm()
            rollback(cache, before, keep=1)
        if name == "lp":
            scores = self.score(self._states())
            outcome.flags["lp"], outcome.scores["lp"] = scores >= self.threshold, scores
            outcome.limits["lp"] = self.threshold
        else:
            mass = tree.log_masses(first, nodes)["refusal"].exp().float().cpu()
            outcome.flags["rk"], outcome.scores["rk"] = mass >= self.prob.threshold, mass
            outcome.limits["rk"] = self.prob.threshold
        return logits, outcome
