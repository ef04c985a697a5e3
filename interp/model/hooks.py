"""Hook sites with TransformerLens names over an unmodified Hugging Face decoder, and hooked forwards.

Sites use the TL names (``blocks.L.hook_resid_pre``, ``blocks.L.hook_resid_post``, ``blocks.L.mlp.hook_in``,
``blocks.L.mlp.hook_out``) but are implemented as plain torch forward hooks on the HF modules, so they take the
same inputs as the HF model (explicit ``position_ids``, 4-D masks for knockout) and give values identical to
``TransformerBridge`` (tested). A hook function maps the site's tensor ``[B, S, d]`` to a tensor of the same
shape (or ``None`` to leave it unchanged). The experiments run their forwards through
:class:`interp.causal.runner.SpanRunner`, where ``S`` is only the span when the prefix is cached; their hooks
address span tokens by negative columns so they fit both.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from interp import UserError

HookFn = Callable[[torch.Tensor], torch.Tensor | None]
_SITE = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_post|mlp\.hook_in|mlp\.hook_out)$")


def resid_pre(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_pre"


def resid_post(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def mlp_in(layer: int) -> str:
    return f"blocks.{layer}.mlp.hook_in"


def mlp_out(layer: int) -> str:
    return f"blocks.{layer}.mlp.hook_out"


def hf_model(model: torch.nn.Module) -> torch.nn.Module:
    """The HF causal LM behind ``model`` (a TransformerBridge keeps it as ``original_model``)."""
    return getattr(model, "original_model", model)


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    base = hf_model(model)
    inner = getattr(base, "model", base)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise UserError(f"{type(base).__name__}: no decoder layers at .model.layers; unsupported architecture")
    return layers


def n_layers(model: torch.nn.Module) -> int:
    return len(decoder_layers(model))


def parse_site(site: str, n: int) -> tuple[int, str]:
    match = _SITE.match(site)
    if not match:
        raise UserError(f"unknown hook site {site!r}; use blocks.L.hook_resid_pre|hook_resid_post|mlp.hook_in|"
                        "mlp.hook_out")
    layer = int(match.group(1))
    if not 0 <= layer < n:
        raise UserError(f"hook site {site!r}: layer {layer} out of range (model has {n} layers)")
    return layer, match.group(2)


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def _replace_first(x, new):
    return (new, *x[1:]) if isinstance(x, tuple) else new


def _register(model: torch.nn.Module, site: str, fn: HookFn) -> torch.utils.hooks.RemovableHandle:
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
        for site, fn in items:
            handles.append(_register(model, site, fn))
        yield
    finally:
        for h in handles:
            h.remove()


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
