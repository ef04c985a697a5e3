"""A lean decode step over preallocated row slots, for Llama-family decoders (Llama, Qwen2).

The transformers forward grows a ``DynamicCache`` by concatenation (a new key/value tensor every step, every
layer), and continuous batching over it copies every layer's cache when a row leaves or joins. A step's time is
mostly its matrix products (75-80% of op time on CPU, bf16, 8-64 rows), so what a leaner step buys is those copies
and the per-layer dispatch. :class:`SlotDecoder` runs the same modules (the model's own norms, projections, rotary
embedding and MLPs, so the arithmetic is the model's) with

- a key/value cache preallocated once per layer, ``[slots, kv_heads, capacity, head_dim]``: a step writes one
  entry per row in place; rows in flight occupy slots ``0..n-1`` (a row that leaves is replaced by the last one,
  so attention reads a view, never a gather);
- attention on that view with the query heads of each key/value head packed as one query of length ``group``
  and a boolean mask of each row's length (no repeated K/V; on CPU torch 2.13, SDPA's own ``enable_gqa`` is
  12x slower for one query token: 15 vs 1.2 ms per layer at 64 rows, bf16).

Prompts are prefilled by the model's own forward (left-padded, as :func:`interp.generate.decode.decode` does) and
their keys/values copied into their slots, right-aligned padding removed. Float32 results equal the transformers
path up to float rounding (tests/test_slots.py checks logits and tokens).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from interp.model.kvcache import cache_kwarg, new_cache

SUPPORTED = ("LlamaForCausalLM", "Qwen2ForCausalLM")


def slot_support(model) -> str | None:
    """``None`` when :class:`SlotDecoder` can run ``model``, else why not (one line)."""
    arch = type(model).__name__
    if arch not in SUPPORTED:
        return f"{arch} is not one of {', '.join(SUPPORTED)}"
    cfg = model.config
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        return "sliding-window layers"
    for layer in model.model.layers:
        attn = layer.self_attn
        if getattr(attn, "sliding_window", None) or hasattr(attn, "q_norm"):
            return "attention with a sliding window or query/key norms"
    if getattr(cfg, "pretraining_tp", 1) not in (None, 1):
        return "tensor-parallel pretraining split (pretraining_tp > 1)"
    return None


HEAD_CHUNK = 16384  # vocabulary rows per product in :func:`greedy_head`


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """The index of each row's largest logit, the first one on ties (as ``argmax``).

    ``max(-1).indices`` is the same index: both return the first maximal value. On CPU it is 2-3x faster than
    ``argmax`` over a bf16 vocabulary (22 vs 64 ms for 256 rows of 151,936 logits), which at 256 rows in flight
    was an eighth of a decode step."""
    return logits.max(-1).indices


@torch.no_grad()
def greedy_head(head: torch.nn.Linear, hidden: torch.Tensor, chunk: int = HEAD_CHUNK) -> torch.Tensor:
    """``greedy(head(hidden))``, the first index on ties, computed over ``chunk`` vocabulary rows at a time.

    Each block of logits stays in cache and only its maximum leaves, where the full ``[rows, vocab]`` product
    writes and rereads 78 MB at 256 rows of Qwen2's 151,936 tokens (bf16, CPU with AMX: 56 against 83 ms). Each
    logit is the same dot product either way; a later block wins only with a strictly larger value. A head that is
    not a plain ``nn.Linear`` (the opt-in int8 one) runs whole."""
    if type(head) is not torch.nn.Linear:
        return greedy(head(hidden))
    best_val = best_idx = None
    for start in range(0, head.out_features, chunk):
        bias = None if head.bias is None else head.bias[start: start + chunk]
        val, idx = F.linear(hidden, head.weight[start: start + chunk], bias).max(-1)
        if best_val is None:
            best_val, best_idx = val, idx
        else:
            take = val > best_val
            best_val = torch.where(take, val, best_val)
            best_idx = torch.where(take, idx + start, best_idx)
    return best_idx


@dataclass
class SlotCache:
    """Keys and values per layer, ``[slots, kv_heads, capacity, head_dim]``, and each slot's filled length."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    lengths: torch.Tensor  # [slots] long

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]


class SlotDecoder:
    """Prefill rows into slots and decode one token for every row in flight (see the module docstring)."""

    def __init__(self, model, slots: int, capacity: int):
        why = slot_support(model)
        if why:
            raise ValueError(f"the slot decoder cannot run this model: {why}")
        self.model = model
        self.inner = model.model
        cfg = model.config
        p = next(model.parameters())
        first = self.inner.layers[0].self_attn
        self.head_dim = first.head_dim
        self.n_heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.group = self.n_heads // self.kv_heads
        self.scale = first.scaling
        shape = self.layer_shape(model, slots, capacity)
        n = len(self.inner.layers)
        self.cache = SlotCache(keys=[p.new_zeros(shape) for _ in range(n)],
                               values=[p.new_zeros(shape) for _ in range(n)],
                               lengths=torch.zeros(slots, dtype=torch.long, device=p.device))
        self.n = 0  # rows in flight, in slots 0..n-1
        self._kw = cache_kwarg(model)
        self._rope = sys.modules[type(model).__module__].apply_rotary_pos_emb  # the model's own rotary arithmetic

    @staticmethod
    def layer_shape(model, slots: int, capacity: int) -> tuple[int, int, int, int]:
        """The shape of one layer's keys (and of its values): ``[slots, kv_heads, capacity, head_dim]``."""
        return (slots, model.config.num_key_value_heads, capacity, model.model.layers[0].self_attn.head_dim)

    @classmethod
    def cache_bytes(cls, model, slots: int, capacity: int) -> int:
        """Bytes the cache of ``slots`` rows of ``capacity`` positions takes (keys and values, every layer)."""
        per_layer = 2 * next(model.parameters()).element_size() * math.prod(cls.layer_shape(model, slots, capacity))
        return per_layer * len(model.model.layers)

    # ------------------------------------------------------------------ rows
    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Forward left-padded prompts with the model's own forward, copy their keys/values into the next free
        slots and return each prompt's last-position logits ``[rows, vocab]``."""
        rows, width = ids.shape
        if self.n + rows > self.cache.keys[0].shape[0]:
            raise ValueError(f"{self.n} rows in flight + {rows} new exceed {self.cache.keys[0].shape[0]} slots")
        lengths = mask.sum(-1)
        if int(lengths.max()) >= self.cache.capacity:
            raise ValueError(f"a prompt of {int(lengths.max())} tokens does not fit the cache ({self.cache.capacity})")
        c = new_cache(self.model)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                            logits_to_keep=1, **{self._kw: c}).logits[:, -1]
        for layer, (k, v) in enumerate(zip(self.cache.keys, self.cache.values)):
            ck, cv = c.layers[layer].keys, c.layers[layer].values
            for r in range(rows):
                length = int(lengths[r])
                k[self.n + r, :, :length] = ck[r, :, width - length:]
                v[self.n + r, :, :length] = cv[r, :, width - length:]
        self.cache.lengths[self.n: self.n + rows] = lengths
        self.n += rows
        return logits

    def remove(self, row: int) -> None:
        """Free ``row``'s slot: the last row in flight moves into it (rows keep slots ``0..n-1``)."""
        last = self.n - 1
        if not 0 <= row <= last:
            raise IndexError(f"row {row} not in flight ({self.n} rows)")
        if row != last:
            length = int(self.cache.lengths[last])
            for k, v in zip(self.cache.keys, self.cache.values):
                k[row, :, :length] = k[last, :, :length]
                v[row, :, :length] = v[last, :, :length]
            self.cache.lengths[row] = length
        self.cache.lengths[last] = 0
        self.n = last

    # ------------------------------------------------------------------ one step
    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Forward one token per row in flight (``tokens[i]`` for slot ``i``); logits ``[n, vocab]``."""
        return self.model.lm_head(self.final_hidden(tokens))

    def greedy_step(self, tokens: torch.Tensor, chunk: int = HEAD_CHUNK) -> torch.Tensor:
        """The greedy next token of every row, ``greedy(step(tokens))``, without the ``[n, vocab]`` logits."""
        return greedy_head(self.model.lm_head, self.final_hidden(tokens), chunk)

    @torch.no_grad()
    def final_hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """Forward one token per row in flight through every layer and the final norm: ``[n, d_model]``."""
        n = self.n
        if tokens.shape != (n,):
            raise ValueError(f"expected {n} tokens, got shape {tuple(tokens.shape)}")
        pos = self.cache.lengths[:n]
        if int(pos.max()) >= self.cache.capacity:
            raise ValueError(f"a row reached the cache capacity ({self.cache.capacity})")
        span = int(pos.max()) + 1
        h = self.inner.embed_tokens(tokens[:, None])  # [n, 1, d]
        cos, sin = self.inner.rotary_emb(h, pos[:, None])  # [n, 1, hd]
        mask = (torch.arange(span, device=pos.device)[None, :] <= pos[:, None])[:, None, None, :]
        rows = torch.arange(n, device=pos.device)
        for layer, k_all, v_all in zip(self.inner.layers, self.cache.keys, self.cache.values):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).view(n, 1, self.n_heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(n, 1, self.kv_heads, self.head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(n, 1, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = self._rope(q, k, cos, sin)
            k_all[rows, :, pos] = k[:, :, 0]
            v_all[rows, :, pos] = v[:, :, 0]
            # the query heads sharing a key/value head are one length-`group` query of it (no repeated K/V)
            o = F.scaled_dot_product_attention(q.reshape(n, self.kv_heads, self.group, self.head_dim),
                                               k_all[:n, :, :span], v_all[:n, :, :span], attn_mask=mask,
                                               scale=self.scale)
            h = h + attn.o_proj(o.reshape(n, 1, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        self.cache.lengths[:n] += 1
        return self.inner.norm(h)[:, 0]
