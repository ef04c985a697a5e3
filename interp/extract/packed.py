"""Packed depth extraction: one forward per response reads the Safety-Token span at every depth.

Hooks sit on the plain Hugging Face model (fast path; their values equal TransformerBridge's
``blocks.L.hook_resid_pre`` / ``hook_resid_post`` / ``ln1.hook_normalized``): a forward pre-hook on each
decoder layer (``resid_pre``), a forward hook on it (``resid_post``) and on its ``input_layernorm`` (``ln1``).
Each hook gathers only the span positions, the last response token before each depth and the last prompt token,
so memory does not grow with sequence length or the number of examples. The forward stops after the deepest
requested layer, and the LM head never runs.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from interp import UserError
from interp.extract.masks import PackedBatch, attention_layout, collate, plan_packed, require_mask_kernel
from interp.extract.rows import example_table
from interp.extract.store import ActivationStore, canonical_hook
from interp.extract.study import check_suffix, control_spans, gather_study, study_positions
from interp.generate.continuations import Continuation
from interp.model import hooks as mh
from interp.model.context import TOO_LONG, context_limit, fit, text_config
from interp.results import Result
from interp.threads import LoadFollower

POSITIONS = ("span", "probe")


@dataclass
class ExtractConfig:
    """What to extract (``anydepth extract``); data and generation options come from :class:`GenerateConfig`."""

    continuations: str | None = field(default=None, metadata={
        "help": "JSONL from `anydepth generate` (default: use --data, generating responses it lacks)"})
    depths: str = field(default="0:500:25", metadata={
        "help": "depth schedule start:end:step (inclusive), 0,25 or a union; 'end' stands for --answer-length "
                "(0,8,16,25:end:25 stores every check of a stride-25 guard)"})
    layers: str = field(default="all", metadata={"help": "all, 0,5,10 or 10:20 (inclusive)"})
    hooks: tuple[str, ...] = field(default=("resid_post",), metadata={
        "help": "resid_pre, resid_post and/or ln1 (the block's normalised input)"})
    positions: str = field(default="span", metadata={
        "help": "store every Safety-Token position or only the probe token", "choices": POSITIONS})
    controls: bool = field(default=False, metadata={
        "help": "also store the position study's reads (`anydepth positions`): control spans injected like the "
                "header (user header, newline run, random tokens), the mean over the response so far, and the last "
                "instruction token"})
    answer_length: int | None = field(default=None, metadata={
        "help": "the deployed guard's max_new_tokens: each answer is checked up to min(its length, this), and its "
                "final check (at that depth) is stored beside the depth grid (default: the deepest depth)"})
    store_dtype: str = field(default="float16", metadata={
        "help": "storage dtype", "choices": ("float32", "float16", "bfloat16")})
    batch_size: int | None = field(default=None, metadata={
        "help": "responses per packed forward (default: 1 on a CPU, where the forward is compute-bound and a wider "
                "batch only adds padding and a larger mask; 4 on a GPU)"})
    too_long: str = field(default="truncate", metadata={
        "help": "prompt + response longer than the model context: truncate (warn), skip (recorded in the store) "
                "or error", "choices": TOO_LONG})
    out: str | None = field(default=None, metadata={
        "help": "store path (default activations/<model>/<data>-<config hash>.h5)"})


def parse_depths(spec: str | Sequence[int], end: int | None = None) -> list[int]:
    """``"0:500:25"`` (inclusive end), ``"0,10,40"``, a union of both (``"0,8,16,25:500:25"``) or a list →
    sorted distinct depths. ``end`` in a range stands for ``end`` (the answer length: ``"0,8,16,25:end:25"``
    covers every stride multiple an answer can reach)."""
    if isinstance(spec, str) and "end" in spec:
        if end is None:
            raise UserError(f"depth schedule {spec!r} uses 'end': give --answer-length (the guard's max_new_tokens) "
                            "or a number")
        spec = spec.replace("end", str(int(end)))
    if not isinstance(spec, str):
        depths = [int(d) for d in spec]
    else:
        depths = []
        try:
            for part in spec.replace(" ", "").split(","):
                if not part:
                    continue
                if ":" not in part:
                    depths.append(int(part))
                    continue
                bounds = [int(p) for p in part.split(":")]
                if len(bounds) not in (2, 3):
                    raise ValueError
                start, stop, step = bounds[0], bounds[1], bounds[2] if len(bounds) == 3 else 1
                if step <= 0 or stop < start:
                    raise ValueError
                depths += range(start, stop + 1, step)
        except ValueError as err:
            raise UserError(f"bad depth schedule {spec!r}; use start:end:step (end inclusive), 0,25,50 or a "
                            "union such as 0,8,16,25:500:25") from err
    if not depths or any(d < 0 for d in depths):
        raise UserError(f"depth schedule {spec!r} must give at least one depth ≥ 0")
    if len(set(depths)) != len(depths):
        raise UserError(f"depth schedule {spec!r} repeats a depth")
    return sorted(depths)


def parse_layers(spec: str | Sequence[int], n_layers: int) -> list[int]:
    """``"all"``, ``"0,5,10"``, ``"10:20"`` (inclusive) or negative indices → sorted layer indices."""
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "all":
            return list(range(n_layers))
        try:
            if ":" in text:
                a, b = (int(x) for x in text.split(":"))
                layers = list(range(a, b + 1))
            else:
                layers = [int(x) for x in text.split(",") if x]
        except ValueError as err:
            raise UserError(f"bad layer list {spec!r}; use all, 0,5,10 or 10:20") from err
    else:
        layers = [int(x) for x in spec]
    layers = sorted({x + n_layers if x < 0 else x for x in layers})
    if not layers or layers[0] < 0 or layers[-1] >= n_layers:
        raise UserError(f"layers {spec!r} out of range for a model with {n_layers} layers")
    return layers


def gather_rows(x: torch.Tensor, b: PackedBatch, positions: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From a site tensor ``x [B, S, d]`` of a packed forward: the span positions at every depth
    ``[B, D, n_pos, d]``, the last token before each depth ``[B, D, d]`` and the last prompt token ``[B, d]``
    (zero where a depth is invalid). Every index moves to ``x``'s device first: with ``device_map`` the layers
    live on different GPUs while the batch lives on the first."""
    dev = x.device
    rows = torch.arange(x.shape[0], device=dev)
    valid = b.valid.to(dev)
    span_idx = b.span_index.to(dev)[:, :, positions.to(dev)]  # [B, D, n_pos]
    acts = x[rows[:, None, None], span_idx.clamp_min(0)] * valid[:, :, None, None].to(x.dtype)
    last = x[rows[:, None], b.last_token_index.to(dev).clamp_min(0)] * valid[:, :, None].to(x.dtype)
    prompt = x[rows, b.prompt_last_index.to(dev)]
    return acts, last, prompt


class SpanReader:
    """Hooks that gather span / last-token / prompt activations of the current :class:`PackedBatch` (and with
    ``controls``, a :class:`interp.spans.controls.ControlSpans`, the position study's reads)."""

    def __init__(self, model, hooks: Sequence[str], layers: Sequence[int], positions: Sequence[int],
                 controls=None):
        self.model, self.hooks, self.layers = model, [canonical_hook(h) for h in hooks], list(layers)
        self.controls = controls
        self.positions = torch.tensor(list(positions), dtype=torch.long)
        self.batch: PackedBatch | None = None
        self.out: dict[str, dict[tuple[str, int], np.ndarray]] = {}
        self._handles = []
        order = [k for k in ("hook_resid_pre", "ln1.hook_normalized", "hook_resid_post") if k in self.hooks]
        try:
            for layer in self.layers:
                for kind in order:
                    self._handles.append(mh.register(model, mh.site(kind, layer), self._reader(kind, layer)))
            last = self.layers[-1]
            if last < mh.n_layers(model) - 1:  # nothing deeper is read: stop the forward there
                self._handles.append(mh.register(model, mh.resid_post(last), mh.stop))
        except BaseException:
            self.remove()
            raise

    def _reader(self, kind: str, layer: int) -> mh.HookFn:
        def read(x: torch.Tensor) -> None:
            self._gather(kind, layer, x)
        return read

    def _gather(self, hook: str, layer: int, x: torch.Tensor) -> None:
        acts, last, prompt = gather_rows(x, self.batch, self.positions)
        key = (hook, layer)
        self.out["acts"][key] = acts.float().cpu().numpy()
        self.out["last_token"][key] = last.float().cpu().numpy()
        self.out["prompt"][key] = prompt.float().cpu().numpy()
        if self.controls is not None:
            for name, value in gather_study(x, self.batch, self.controls).items():
                self.out["positions"].setdefault(name, {})[key] = value.float().cpu().numpy()

    def run(self, batch: PackedBatch) -> dict[str, dict[tuple[str, int], np.ndarray]]:
        """One forward of the packed batch; returns float32 arrays keyed by (hook, layer)."""
        self.batch = batch
        self.out = {"acts": {}, "last_token": {}, "prompt": {}, "positions": {}}
        try:
            with torch.no_grad():
                mh.forward_until_stop(mh.body(self.model), input_ids=batch.input_ids,
                                      position_ids=batch.position_ids, attention_mask=batch.attention_mask,
                                      use_cache=False)
        finally:
            self.batch = None
        return self.out

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _model_dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


def resolve_answer_length(depths: Sequence[int], answer_length: int | None) -> int:
    """The horizon answers are checked to: ``answer_length``, or the deepest depth when it is None."""
    if answer_length is None:
        return int(max(depths))
    if int(answer_length) < 1:
        raise UserError(f"--answer-length must be >= 1 (the guard's max_new_tokens), got {answer_length}")
    return int(answer_length)


def prepare_plans(items: Sequence[Continuation], span_ids: Sequence[int], depths: Sequence[int],
                  max_context: int | None, too_long: str = "truncate", answer_length: int | None = None,
                  controls: Sequence[Sequence[int]] = ()):
    """Plans for every item (responses cut after the deepest depth or the answer length, and to the context),
    each with its end slot at ``min(length, answer_length)``, with warnings. Items that do not fit under
    ``too_long="skip"`` must be dropped first (:func:`skipped_too_long`).

    Returns ``(plans, valid [N, D], n_tokens [N], end_depths [N])``."""
    if too_long not in TOO_LONG:
        raise UserError(f"--too-long must be one of {', '.join(TOO_LONG)}, got {too_long!r}")
    h, horizon = len(span_ids), resolve_answer_length(depths, answer_length)
    deepest = max(max(depths), horizon)
    plans, n_tokens, ends = [], [], []
    for item in items:
        if not item.prompt_ids:
            raise UserError(f"example {item.id!r} has an empty prompt")
        response = list(item.response_ids)
        n_tokens.append(len(response))
        keep = fit(item.id, len(item.prompt_ids) + h, min(len(response), deepest), max_context,
                   "truncate" if too_long == "skip" else too_long)
        end = min(len(response), horizon, keep)
        ends.append(end)
        plans.append(plan_packed(item.prompt_ids, response[:keep], span_ids, depths, end=end, controls=controls))
    empty = [it.id for it in items if not it.response_ids]
    if empty:
        warnings.warn(f"{len(empty)} example(s) have an empty response (only depth 0 is valid): {empty[:3]}",
                      stacklevel=2)
    valid = np.array([p.valid[:len(depths)] for p in plans], dtype=bool).reshape(len(plans), len(depths))
    never = [d for d, col in zip(depths, valid.T) if not col.any()]
    if never:
        warnings.warn(f"depths {never} exceed every response; they are masked (valid=False)", stacklevel=2)
    return plans, valid, np.asarray(n_tokens, dtype=np.int64), np.asarray(ends, dtype=np.int64)


def skipped_too_long(items: Sequence[Continuation], span_ids: Sequence[int], depths: Sequence[int],
                     max_context: int | None, answer_length: int | None = None) -> list[str]:
    """Ids of the items whose prompt + response (to the deepest depth or the answer length) + span exceed the
    context."""
    h, deepest = len(span_ids), max(max(depths), resolve_answer_length(depths, answer_length))
    return [it.id for it in items if fit(it.id, len(it.prompt_ids) + h, min(len(it.response_ids), deepest),
                                         max_context, "skip") is None]


def model_provenance(model, tokenizer, given: dict | None = None) -> dict:
    """What a store records about the model that wrote it, so another model cannot append to it: ``given`` (the
    loader's provenance, with the weights hash) completed with the model's name, shape and tokenizer fingerprint
    where it lacks them (the fingerprint is only computed then)."""
    from interp.spans.render import tokenizer_sha256

    prov = dict(given or {})
    cfg = text_config(model)
    prov.setdefault("model_id", str(getattr(model.config, "_name_or_path", "") or type(model).__name__))
    prov.setdefault("architecture", type(model).__name__)
    prov.setdefault("n_layers", int(cfg.num_hidden_layers))
    prov.setdefault("d_model", int(cfg.hidden_size))
    if "tokenizer_sha256" not in prov:
        prov["tokenizer_sha256"] = tokenizer_sha256(tokenizer)
    return prov


def token_ids_sha256(items: Sequence[Continuation]) -> str:
    """One hash over every row's id, prompt ids and response ids: a resume must see the same tokens, not only
    the same example ids (continuations from another tokenizer reuse the ids)."""
    import hashlib

    h = hashlib.sha256()
    for it in items:
        h.update(f"{it.id}\0{list(it.prompt_ids)}\0{list(it.response_ids)}\n".encode())
    return h.hexdigest()


def batch_order(plans: Sequence, batch_size: int) -> list[list[int]]:
    """Deterministic batches of similar length (longest first), fixed by the data so a resume recomputes
    exactly the same batches."""
    order = sorted(range(len(plans)), key=lambda i: (-plans[i].length, i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@dataclass
class ExtractResult(Result):
    """Where the store is and what this run computed (rows done earlier were kept)."""

    kind = "extract"
    path: Path
    n_examples: int
    n_computed: int
    n_tokens: int
    seconds: float

    def open(self) -> ActivationStore:
        """The store, read-only (use it in a ``with`` block)."""
        return ActivationStore.open(self.path)

    def summary(self) -> str:
        rate = self.n_tokens / max(self.seconds, 1e-9)
        return f"wrote {self.path}: {self.n_examples} examples ({self.n_computed} computed now, {rate:.0f} tok/s)"


def default_batch_size(device: torch.device) -> int:
    """Responses per packed forward when none is given: 1 on a CPU, where the forward is compute-bound and a wider
    batch only adds padding and mask (bf16, Qwen2.5-0.5B, sdpa: 1.1x on 300-520-token rows, no gain or loss on
    128-token ones), 4 on an accelerator, which needs the wider batch."""
    return 1 if torch.device(device).type == "cpu" else 4


def _check_inputs(model, items: Sequence[Continuation], batch_size: int, positions: str) -> None:
    """One-line errors before any work: no rows, token ids past the vocabulary, bad sizes."""
    if not items:
        raise UserError("no examples to extract")
    require_mask_kernel(model, "packed extraction")
    vocab = getattr(text_config(model), "vocab_size", None)
    if vocab:
        for it in items:
            top = max([*it.prompt_ids, *it.response_ids], default=0)
            if top >= vocab:
                raise UserError(f"example {it.id!r} holds token id {top}, past this model's vocabulary of {vocab}: "
                                "the continuations were made with another tokenizer; regenerate them for this model")
    if batch_size < 1:
        raise UserError("batch size must be ≥ 1")
    if positions not in POSITIONS:
        raise UserError(f"--positions must be one of {POSITIONS}, got {positions!r}")


def _store_provenance(prov: dict, spans, depths, items, skipped: list, horizon: int, controls) -> dict:
    """The model's provenance with what the store holds: the span, the depths, the items' token ids, the answer
    length and the position study's reads."""
    span_info = spans.to_dict() if hasattr(spans, "to_dict") else {}
    prov.update(span_text=getattr(spans, "span_text", span_info.get("span_text", "")),
                span_ids=[int(t) for t in spans.span_ids], probe_index=int(spans.probe_index),
                template_hash=getattr(spans, "template_hash", None), spans=span_info,
                depth_schedule=[int(d) for d in depths], skipped_too_long=skipped,
                token_ids_sha256=token_ids_sha256(items), answer_length=horizon)
    if controls is not None:
        prov.update(study_positions=study_positions(controls), controls=controls.to_dict())
    return prov


def extract_to_store(model, tokenizer, items: Sequence[Continuation], out: str | Path, *, spans,
                     depths: Sequence[int], layers: Sequence[int], hooks: Sequence[str] = ("resid_post",),
                     positions: str = "span", storage_dtype: str = "float16", batch_size: int | None = None,
                     too_long: str = "truncate", provenance: dict | None = None, progress: bool = True,
                     answer_length: int | None = None, on_batch=None, controls=None) -> ExtractResult:
    """Extract every item at every depth, and at its end (its final check at ``min(length, answer_length)``,
    default the deepest depth), into the HDF5 store at ``out`` (resuming rows not yet done).

    ``spans`` is a :class:`interp.spans.derive.SafetySpans` (``span_ids``, ``probe_index``, ``to_dict()``);
    ``controls`` (:class:`interp.spans.controls.ControlSpans`) adds the position study's reads
    (:func:`interp.extract.study.gather_study`).
    ``on_batch(n_done)`` is called after each written batch (tests use it to crash mid-run).
    """
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    batch_size = default_batch_size(device) if batch_size is None else batch_size
    _check_inputs(model, items, batch_size, positions)
    cfg, max_context = text_config(model), context_limit(model)
    span_ids = [int(t) for t in spans.span_ids]
    depths = parse_depths(depths, answer_length)
    hooks = [canonical_hook(h) for h in hooks]
    pos = list(range(len(span_ids))) if positions == "span" else [int(spans.probe_index)]
    horizon = resolve_answer_length(depths, answer_length)
    skipped = skipped_too_long(items, span_ids, depths, max_context, horizon) if too_long == "skip" else []
    if skipped:
        warnings.warn(f"--too-long skip: {len(skipped)} example(s) exceed the model context and are not stored "
                      f"(e.g. {skipped[0]!r}; all listed in the store's 'skipped_too_long' attribute)", stacklevel=2)
        items = [it for it in items if it.id not in set(skipped)]
        if not items:
            raise UserError("every example exceeds the model context (--too-long skip left none)")
    if controls is not None:
        check_suffix(items, controls)
    plans, valid, n_tokens, ends = prepare_plans(items, span_ids, depths, max_context, too_long, horizon,
                                                 control_spans(controls))
    prov = _store_provenance(model_provenance(model, tokenizer, provenance), spans, depths, items, skipped, horizon,
                             controls)
    examples = example_table(tokenizer, items, depths, n_tokens, valid, ends, progress=progress)
    store = ActivationStore.create(out, prov, examples, depths=depths, hooks=hooks, layers=layers, positions=pos,
                                   d_model=cfg.hidden_size, storage_dtype=storage_dtype)
    window, types = attention_layout(model.config)
    reader = SpanReader(model, hooks, layers, pos, controls)
    done = store.done
    empty_at_start = not done.any()
    batches = [b for b in batch_order(plans, batch_size) if not done[b].all()]
    start, computed, tokens = time.perf_counter(), 0, 0
    bar = tqdm(total=len(items), initial=int(done.sum()), desc="extract", unit="ex", disable=not progress)
    load = LoadFollower()  # one thread fewer while another process keeps a core busy
    try:
        for rows in batches:
            load.tick()
            batch = collate([plans[i] for i in rows], tokenizer.pad_token_id or 0, dtype=_model_dtype(model),
                            sliding_window=window, layer_types=types, device=device)
            out_arrays = reader.run(batch)
            store.write_rows(rows, out_arrays["acts"], out_arrays["last_token"], out_arrays["prompt"],
                             out_arrays["positions"])
            computed += len(rows)
            tokens += batch.n_tokens
            elapsed = max(time.perf_counter() - start, 1e-9)
            bar.update(int((~done[rows]).sum()))
            bar.set_postfix_str(f"{computed / elapsed:.2f} ex/s, {tokens / elapsed:.0f} tok/s")
            if on_batch is not None:
                on_batch(computed)
    except BaseException:
        # a run that fails before its first row is done leaves no file behind (there is nothing to resume)
        if empty_at_start and not store.done.any():
            store.close()
            Path(out).unlink(missing_ok=True)
        raise
    finally:
        load.restore()
        bar.close()
        reader.remove()
        store.close()
    return ExtractResult(Path(out), len(items), computed, tokens, time.perf_counter() - start)
