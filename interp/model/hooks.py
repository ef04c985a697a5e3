"""The one hook module: decoder-layer lookup, sites with TransformerLens names, tap / edit / stop hooks.

Every stage that reads or edits the residual stream goes through here: packed extraction
(:mod:`interp.extract.packed`), the guard's probe tap (:mod:`interp.guard.checks`), the causal runner and the
transcoder collection. Sites use the TL names (``blocks.L.hook_resid_pre``, ``blocks.L.hook_resid_post``,
``blocks.L.ln1.hook_normalized``, ``blocks.L.mlp.hook_in``, ``blocks.L.mlp.hook_out``) but are plain torch
forward hooks on the Hugging Face modules, so they take the same inputs as the HF model (explicit
``position_ids``, 4-D masks) and give values identical to ``TransformerBridge`` (tested). A hook function maps
the site's tensor ``[B, S, d]`` to a tensor of the same shape, or ``None`` to leave it unchanged; raising
:class:`StopForward` from one ends the forward there (:func:`forward_until_stop`), so deeper layers and the LM
head never run.

The decoder is found through ``get_decoder()`` where transformers provides it, so models whose layers sit under
``model.language_model`` (vision-language wrappers such as Llava or Gemma-3) work like plain causal LMs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from interp import UserError

HookFn = Callable[[torch.Tensor], torch.Tensor | None]
KINDS = ("hook_resid_pre", "hook_resid_post", "ln1.hook_normalized", "mlp.hook_in", "mlp.hook_out")
_SITE = re.compile(r"^blocks\.(\d+)\.(" + "|".join(re.escape(k) for k in KINDS) + r")$")


def resid_pre(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_pre"


def resid_post(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def ln1(layer: int) -> str:
    return f"blocks.{layer}.ln1.hook_normalized"


def mlp_in(layer: int) -> str:
    return f"blocks.{layer}.mlp.hook_in"


def mlp_out(layer: int) -> str:
    return f"blocks.{layer}.mlp.hook_out"


def site(kind: str, layer: int) -> str:
    """``blocks.{layer}.{kind}`` for a kind of :data:`KINDS` (the store's hook names)."""
    if kind not in KINDS:
        raise UserError(f"unknown hook {kind!r}; use one of {', '.join(KINDS)}")
    return f"blocks.{int(layer)}.{kind}"


def hf_model(model: torch.nn.Module) -> torch.nn.Module:
    """The HF model behind ``model`` (a TransformerBridge keeps it as ``original_model``)."""
    return getattr(model, "original_model", model)


def body(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack without the LM head (``LlamaModel`` of a ``LlamaForCausalLM``; the language model of a
    vision-language wrapper): forwarding it gives hidden states and never computes logits."""
    base = hf_model(model)
    get = getattr(base, "get_decoder", None)
    decoder = get() if callable(get) else None
    if decoder is None:
        decoder = getattr(base, getattr(base, "base_model_prefix", "") or "model", base)
    return decoder


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder blocks, found under the decoder stack (``.model.layers``, ``.model.language_model.layers``)."""
    for owner in (body(model), hf_model(model)):
        layers = getattr(owner, "layers", None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    raise UserError(f"{type(hf_model(model)).__name__}: cannot find its decoder layers (looked for .layers "
                    "under get_decoder() and the model); unsupported architecture")


def n_layers(model: torch.nn.Module) -> int:
    return len(decoder_layers(model))


def parse_site(site: str, n: int) -> tuple[int, str]:
    match = _SITE.match(site)
    if not match:
        raise UserError(f"unknown hook site {site!r}; use blocks.L.hook_resid_pre|hook_resid_post|mlp.hook_in|"
                        "mlp.hook_out|ln1.hook_normalized")
    layer = int(match.group(1))
    if not 0 <= layer < n:
        raise UserError(f"hook site {site!r}: layer {layer} out of range (model has {n} layers)")
    return layer, match.group(2)


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def _replace_first(x, new):
    return (new, *x[1:]) if isinstance(x, tuple) else new


def register(model: torch.nn.Module, site: str, fn: HookFn) -> torch.utils.hooks.RemovableHandle:
    """Attach ``fn`` at ``site``; the caller removes the returned handle (or use :func:`hooks_attached`)."""
    layers = decoder_layers(model)
    layer, kind = parse_site(site, len(layers))
    block = layers[layer]
    if kind == "hook_resid_pre":
        def pre(_mod, args, kwargs):
            if args:
                new = fn(args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            new = fn(kwargs["hidden_states"])
            if new is not None:
                kwargs = {**kwargs, "hidden_states": new}
            return args, kwargs
        return block.register_forward_pre_hook(pre, with_kwargs=True)
    if kind == "mlp.hook_in":
        def pre_mlp(_mod, args):
            new = fn(args[0])
            return None if new is None else (new, *args[1:])
        return block.mlp.register_forward_pre_hook(pre_mlp)
    if kind == "ln1.hook_normalized":
        module = getattr(block, "input_layernorm", None)
        if module is None:
            raise UserError(f"{type(block).__name__} has no input_layernorm; drop the ln1 hook")
    else:
        module = block if kind == "hook_resid_post" else block.mlp

    def post(_mod, _args, out):
        new = fn(_first(out))
        return None if new is None else _replace_first(out, new)
    return module.register_forward_hook(post)


@contextmanager
def hooks_attached(model: torch.nn.Module, hooks: dict[str, HookFn] | list[tuple[str, HookFn]]
                   ) -> Iterator[None]:
    """Attach ``site -> fn`` hooks for the duration of the block (always removed, also on error)."""
    items = hooks.items() if isinstance(hooks, dict) else hooks
    handles = []
    try:
        for name, fn in items:
            handles.append(register(model, name, fn))
        yield
    finally:
        for h in handles:
            h.remove()


class StopForward(Exception):
    """Raised from a hook to end a forward early (caught by :func:`forward_until_stop`)."""


def stop(_x: torch.Tensor) -> None:
    """A hook that ends the forward at its site."""
    raise StopForward


def forward_until_stop(module: torch.nn.Module, **kwargs):
    """``module(**kwargs)``, or ``None`` when a hook stopped it early."""
    try:
        return module(**kwargs)
    except StopForward:
        return None


class Tap:
    """A hook at one site that, while armed, keeps the site's vectors at column ``index`` (and optionally
    stops the forward there): the guard's probe read. Disarmed it costs one attribute check per forward."""

    def __init__(self, model: torch.nn.Module, site: str):
        self.armed, self.stop, self.index, self.value = False, False, -1, None
        self.handle = register(model, site, self._take)

    def arm(self, index: int | slice, stop: bool = False) -> None:
        """Keep column ``index`` (or the columns of a slice) at the next forwards."""
        index = index if isinstance(index, slice) else int(index)
        self.armed, self.stop, self.index, self.value = True, bool(stop), index, None

    def _take(self, hidden: torch.Tensor) -> None:
        if self.armed:
            self.value = hidden[:, self.index]
            if self.stop:
                raise StopForward

    def remove(self) -> None:
        self.handle.remove()


@dataclass
class Inputs:
    """Token ids and optional mask / positions for one batched forward."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | dict[str, torch.Tensor] | None = None  # 2-D, 4-D or per layer type
    position_ids: torch.Tensor | None = None

    def kwargs(self) -> dict[str, torch.Tensor]:
        out = {"input_ids": self.input_ids}
        if self.attention_mask is not None:
            out["attention_mask"] = self.attention_mask
        if self.position_ids is not None:
            out["position_ids"] = self.position_ids
        return out


@torch.no_grad()
def run_with_hooks(model: torch.nn.Module, inputs: Inputs, hooks: dict[str, HookFn] | None = None,
                   capture: tuple[str, ...] = ()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits ``[B, S, V]`` and the captured site tensors (after any hook on the same site ran)."""
    base = hf_model(model)
    cache: dict[str, torch.Tensor] = {}
    items: list[tuple[str, HookFn]] = list((hooks or {}).items())

    def saver(name: str) -> HookFn:
        def fn(x: torch.Tensor) -> None:
            cache[name] = x.detach().clone()
        return fn

    items += [(name, saver(name)) for name in capture]
    with hooks_attached(base, items):
        out = base(**inputs.kwargs(), use_cache=False)
    return out.logits, cache


def at_positions(fn: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor, cols: torch.Tensor) -> HookFn:
    """A hook that applies ``fn`` to the ``[N, d]`` vectors at (rows[i], cols[i]) and nowhere else.

    Negative ``cols`` count from the end (the span of a left-padded batch, see :func:`interp.causal.runner.span_cols`).
    """

    def hook(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[rows, cols] = fn(x[rows, cols]).to(x.dtype)
        return x
    return hook
