"""The one builder of injected inputs: token ids, position ids and attention masks for every forward.

"Inject the span after d response tokens" means: the model sees ``prompt ‖ response[:d] ‖ span`` with
positions ``0 … P+d+h-1``. Extraction packs every depth of one response into a single row
(``prompt ‖ response ‖ span(d_1) ‖ … ‖ span(d_D)``) whose attention mask makes span copy k see only the first
``P + d_k`` tokens and itself. The guard forwards the span over a KV cache
(:func:`span_over_cache`) or rides it on the next decode step (:func:`piggyback_inputs`). The causal code and
the guard left-pad their batches with :func:`left_pad`, and the causal knockout builds its mask with
:func:`additive_masks`, the same rule the packed mask uses.

Masks are additive float masks (0 where attention is allowed, ``finfo(dtype).min`` elsewhere), which
transformers passes through unchanged when they are 4-D. Models with sliding-window layers get a dict
``{layer_type: mask}`` (Gemma-2/3, Qwen2 with sliding layers) or one windowed tensor (Mistral-style configs);
the window is applied on logical positions, matching ``kv_idx > q_idx - window`` in transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from interp import UserError

MAIN = -1  # copy index of prompt/response tokens
PAD = -2  # copy index of padding tokens


@dataclass(frozen=True)
class PackedPlan:
    """One packed row: prompt ‖ response ‖ one span copy per valid depth."""

    input_ids: tuple[int, ...]
    position_ids: tuple[int, ...]
    copy_index: tuple[int, ...]  # MAIN for prompt/response tokens, k for tokens of the copy at depths[k]
    depths: tuple[int, ...]  # the shared depths, then the row's end depth when planned with one
    valid: tuple[bool, ...]  # valid[k] = depths[k] <= response length
    span_start: tuple[int, ...]  # sequence index of copy k's first token, -1 if invalid
    prompt_len: int
    response_len: int
    span_len: int
    control_start: tuple[tuple[int, ...], ...] = ()  # [C][depth]: sequence index of control c's copy, -1 if invalid
    control_len: tuple[int, ...] = ()  # [C] length of each control span

    @property
    def length(self) -> int:
        return len(self.input_ids)

    @property
    def main_len(self) -> int:
        return self.prompt_len + self.response_len

    @property
    def last_token_index(self) -> tuple[int, ...]:
        """Sequence index of the last token before each depth (last prompt token at depth 0); -1 if invalid."""
        return tuple(self.prompt_len + d - 1 if ok else -1 for d, ok in zip(self.depths, self.valid))


def plan_packed(prompt_ids: Sequence[int], response_ids: Sequence[int], span_ids: Sequence[int],
                depths: Sequence[int], end: int | None = None, controls: Sequence[Sequence[int]] = ()) -> PackedPlan:
    """Lay out one response with a span copy after each valid depth (invalid depths get no copy), and with
    ``end`` one more copy after that many tokens (the answer's final check; it may equal a shared depth).
    Each of ``controls`` (other spans, e.g. :mod:`interp.spans.controls`) gets a copy at every depth the span
    gets one, laid out after the span copies and masked the same way."""
    depths = tuple(int(d) for d in depths)
    if not prompt_ids:
        raise ValueError("prompt_ids is empty")
    if not span_ids:
        raise ValueError("span_ids is empty")
    if any(d < 0 for d in depths) or list(depths) != sorted(set(depths)):
        raise ValueError(f"depths must be distinct, non-negative and increasing, got {depths}")
    if end is not None:
        if not 0 <= int(end) <= len(response_ids):
            raise ValueError(f"end depth {end} is outside the response of {len(response_ids)} tokens")
        depths += (int(end),)
    P, R, h = len(prompt_ids), len(response_ids), len(span_ids)
    ids = [int(t) for t in prompt_ids] + [int(t) for t in response_ids]
    pos = list(range(P + R))
    copy = [MAIN] * (P + R)
    valid, starts = [], []
    for k, d in enumerate(depths):
        ok = d <= R
        valid.append(ok)
        if not ok:
            starts.append(-1)
            continue
        starts.append(len(ids))
        ids += [int(t) for t in span_ids]
        pos += range(P + d, P + d + h)
        copy += [k] * h
    control_start = []
    for c, cids in enumerate(controls):
        if not cids:
            raise ValueError(f"control span {c} is empty")
        c_starts = []
        for k, d in enumerate(depths):
            if not valid[k]:
                c_starts.append(-1)
                continue
            c_starts.append(len(ids))
            ids += [int(t) for t in cids]
            pos += range(P + d, P + d + len(cids))
            copy += [(c + 1) * len(depths) + k] * len(cids)
        control_start.append(tuple(c_starts))
    return PackedPlan(tuple(ids), tuple(pos), tuple(copy), depths, tuple(valid), tuple(starts), P, R, h,
                      tuple(control_start), tuple(len(c) for c in controls))


@dataclass
class PackedBatch:
    """Right-padded tensors for one forward over several packed rows."""

    input_ids: torch.Tensor  # [B, S]
    position_ids: torch.Tensor  # [B, S]
    attention_mask: torch.Tensor | dict[str, torch.Tensor]  # [B, 1, S, S] additive, or per layer type
    span_index: torch.Tensor  # [B, D, h] sequence index of each copy's tokens, -1 if invalid
    last_token_index: torch.Tensor  # [B, D]
    prompt_last_index: torch.Tensor  # [B]
    valid: torch.Tensor  # [B, D] bool
    n_tokens: int  # real (non-pad) tokens in the batch
    control_last: torch.Tensor | None = None  # [B, C, D] sequence index of each control copy's last token, -1 if none


def attention_layout(config) -> tuple[int | None, list[str] | None]:
    """``(sliding_window, layer_types)`` to pass to :func:`collate` / :func:`piggyback_inputs` for a model config."""
    cfg = getattr(config, "get_text_config", lambda: config)()
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if types is not None:
        types = list(types)
        if "sliding_attention" not in types:
            window = None
    return window, types


MASK_KERNELS = ("eager", "sdpa")  # attention implementations that take an arbitrary additive 4-D mask


def require_mask_kernel(model, what: str) -> None:
    """Refuse, in one line, a model loaded with an attention kernel that cannot take our custom 4-D masks
    (``flash_attention_2``/``_3`` and ``flex_attention`` build their own masks and would ignore or reject it)."""
    cfg = getattr(model, "config", None)
    impl = getattr(cfg, "_attn_implementation", None)
    if impl is not None and impl not in MASK_KERNELS:
        raise UserError(f"{what} needs an attention kernel that takes an arbitrary 4-D mask, but the model uses "
                        f"{impl!r}; load it with attn_implementation='sdpa' or 'eager' (--attn-implementation sdpa)")


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.unsqueeze(1)


def additive_masks(allowed: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, dtype: torch.dtype,
                   sliding_window: int | None, layer_types: Sequence[str] | None):
    """Additive ``[B, 1, Q, K]`` mask from a boolean ``allowed [B, Q, K]``; with ``sliding_window`` the window is
    applied on the logical positions ``q_pos [B, Q]`` / ``k_pos [B, K]``: a per-layer-type dict, or one windowed
    mask when the config names no layer types (Mistral-style)."""
    if sliding_window is None:
        return _additive(allowed, dtype)
    in_window = (q_pos[:, :, None] - k_pos[:, None, :]) < sliding_window
    windowed = allowed & in_window
    if layer_types is None:  # Mistral-style: one window for every layer
        return _additive(windowed, dtype)
    known = {"full_attention", "sliding_attention"}
    unknown = set(layer_types) - known
    if unknown:
        raise ValueError(f"unsupported attention layer types {sorted(unknown)}; supported: {sorted(known)}")
    out = {"full_attention": _additive(allowed, dtype)}
    if "sliding_attention" in layer_types:
        out["sliding_attention"] = _additive(windowed, dtype)
    return out


def collate(plans: Sequence[PackedPlan], pad_id: int, *, dtype: torch.dtype = torch.float32,
            sliding_window: int | None = None, layer_types: Sequence[str] | None = None,
            device: torch.device | str | None = None) -> PackedBatch:
    """Right-pad plans into one batch with the tree mask (pad rows see only themselves)."""
    if not plans:
        raise ValueError("no plans to collate")
    D = len(plans[0].depths)
    if any(len(p.depths) != D or p.span_len != plans[0].span_len or p.control_len != plans[0].control_len
           for p in plans):
        raise ValueError("all plans in a batch need as many depth slots and the same span and control lengths")
    B, S, h = len(plans), max(p.length for p in plans), plans[0].span_len
    C = len(plans[0].control_len)
    control_last = torch.full((B, C, D), -1, dtype=torch.long)
    ids = torch.full((B, S), int(pad_id), dtype=torch.long)
    pos = torch.zeros((B, S), dtype=torch.long)
    copy = torch.full((B, S), PAD, dtype=torch.long)
    visible = torch.zeros((B, S), dtype=torch.long)  # prompt/response tokens each row may see
    span_index = torch.full((B, D, h), -1, dtype=torch.long)
    for b, p in enumerate(plans):
        n = p.length
        ids[b, :n] = torch.tensor(p.input_ids)
        pos[b, :n] = torch.tensor(p.position_ids)
        copy[b, :n] = torch.tensor(p.copy_index)
        visible[b, :p.main_len] = p.main_len
        for k, (d, start) in enumerate(zip(p.depths, p.span_start)):
            if start >= 0:
                visible[b, start:start + h] = p.prompt_len + d
                span_index[b, k] = torch.arange(start, start + h)
            for c, n_c in enumerate(p.control_len):
                c_start = p.control_start[c][k]
                if c_start >= 0:
                    visible[b, c_start:c_start + n_c] = p.prompt_len + d
                    control_last[b, c, k] = c_start + n_c - 1
        pad_pos = torch.arange(n, S) - n  # pad positions: harmless, see only themselves
        pos[b, n:] = pad_pos
    idx = torch.arange(S)
    causal = idx[None, :] <= idx[:, None]
    col_main = (copy == MAIN)[:, None, :] & (idx[None, None, :] < visible[:, :, None])
    same_copy = (copy[:, :, None] == copy[:, None, :]) & (copy[:, :, None] >= 0)
    allowed = (causal[None] & (col_main | same_copy)) | torch.eye(S, dtype=torch.bool)[None]
    mask = additive_masks(allowed, pos, pos, dtype, sliding_window, layer_types)
    last = torch.tensor([p.last_token_index for p in plans], dtype=torch.long).reshape(B, D)
    batch = PackedBatch(
        input_ids=ids, position_ids=pos, attention_mask=mask, span_index=span_index,
        last_token_index=last,
        prompt_last_index=torch.tensor([p.prompt_len - 1 for p in plans], dtype=torch.long),
        valid=torch.tensor([p.valid for p in plans], dtype=torch.bool).reshape(B, D),
        n_tokens=sum(p.length for p in plans), control_last=control_last if C else None)
    if device is not None:
        batch = to_device(batch, device)
    return batch


def to_device(batch: PackedBatch, device) -> PackedBatch:
    """Move every tensor of a batch to ``device``."""
    mask = batch.attention_mask
    mask = {k: v.to(device) for k, v in mask.items()} if isinstance(mask, dict) else mask.to(device)
    return PackedBatch(batch.input_ids.to(device), batch.position_ids.to(device), mask,
                       batch.span_index.to(device), batch.last_token_index.to(device),
                       batch.prompt_last_index.to(device), batch.valid.to(device), batch.n_tokens,
                       None if batch.control_last is None else batch.control_last.to(device))


def span_over_cache_inputs(span_ids: Sequence[int], cache_len: int | torch.Tensor, batch: int = 1,
                           device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids [B,h], position_ids [B,h])`` to forward the span at positions n … n+h-1 over a cache of n.

    ``cache_len`` may be a ``[B]`` tensor of per-row positions (left-padded batches).
    """
    h = len(span_ids)
    ids = torch.tensor([list(span_ids)] * batch, dtype=torch.long, device=device)
    start = torch.as_tensor(cache_len, dtype=torch.long, device=device).reshape(-1, 1)
    pos = (start + torch.arange(h, device=device)[None]).expand(batch, h).contiguous()
    return ids, pos


def span_over_cache(span_ids: Sequence[int], prefix_mask: torch.Tensor, positions: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, position_ids, attention_mask)`` to forward the span over a cache whose rows have the 2-D
    ``prefix_mask [B, n]`` (1 = real) and continue at ``positions [B]``; the mask is the prefix's plus the span's."""
    B, dev = prefix_mask.shape[0], prefix_mask.device
    ids, pos = span_over_cache_inputs(span_ids, positions, batch=B, device=dev)
    mask = torch.cat([prefix_mask, torch.ones((B, len(span_ids)), dtype=prefix_mask.dtype, device=dev)], dim=1)
    return ids, pos, mask


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, position_ids)`` of token rows left-padded to one width: the mask is 1 on
    real tokens and positions count real tokens only (``cumsum(mask) - 1``), so padding never shifts a row."""
    if not rows:
        raise ValueError("no rows to pad")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            ids[i, width - len(r):] = torch.tensor([int(t) for t in r])
            mask[i, width - len(r):] = 1
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    if device is not None:
        ids, mask, pos = ids.to(device), mask.to(device), pos.to(device)
    return ids, mask, pos


def tree_over_cache_inputs(tokens: torch.Tensor, parents: Sequence[int], cache_len: int, *,
                           dtype: torch.dtype = torch.float32, prefix_mask: torch.Tensor | None = None,
                           positions: torch.Tensor | None = None, sliding_window: int | None = None,
                           layer_types: Sequence[str] | None = None, sliding_cache_len: int | None = None,
                           device: torch.device | str | None = None):
    """Inputs for one forward of a forest of ``T`` new tokens over a cache of ``cache_len`` entries.

    ``tokens [B, T]`` (or ``[T]``, the same for every row); ``parents[i]`` is the index of token i's parent among
    the new tokens (``-1``: a root, which sits right after the cache). Token i at depth k (a root has depth 0)
    has position ``positions + k`` (``positions [B]``, default ``cache_len``) and sees the cached prefix
    (``prefix_mask [B, n]``, 1 = real) and its ancestors and itself, nothing else. After the forward the cache
    holds ``prefix ‖ tokens``; roll it back to drop them. Sliding layers of a transformers sliding-window cache
    hold only their last ``sliding_cache_len`` (default ``min(n, window-1)``) prefix entries; their mask is sized
    to that. Returns ``(input_ids [B, T], position_ids [B, T], attention_mask)`` on ``device`` (default: the
    device of ``tokens``).
    """
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    dev = tokens.device if device is None else torch.device(device)
    T = len(parents)
    if tokens.dim() == 1:
        B = 1 if prefix_mask is None else prefix_mask.shape[0]
        tokens = tokens.reshape(1, T).expand(B, T)
    tokens = tokens.to(dev)
    B, n = tokens.shape[0], int(cache_len)
    depth, anc = [0] * T, torch.eye(T, dtype=torch.bool, device=dev)
    for i, p in enumerate(parents):
        if not -1 <= p < i:
            raise ValueError(f"parent {p} of new token {i} must be -1 or an earlier token")
        if p >= 0:
            depth[i] = depth[p] + 1
            anc[i] |= anc[p]
    offs = torch.tensor(depth, dtype=torch.long, device=dev)
    start = (torch.full((B,), n, dtype=torch.long, device=dev) if positions is None
             else torch.as_tensor(positions).long().to(dev))
    pos = start[:, None] + offs[None]
    q_logical = (n + offs)[None].expand(B, -1)  # cache index space, for the window rule
    prefix = (torch.ones((B, n), dtype=torch.bool, device=dev) if prefix_mask is None
              else prefix_mask.to(device=dev, dtype=torch.bool))

    def build(m: int) -> torch.Tensor:  # mask over the last m prefix entries + the T new ones
        return torch.cat([prefix[:, n - m:, None].transpose(1, 2).expand(B, T, m), anc[None].expand(B, -1, -1)], dim=2)

    full = build(n)
    if sliding_window is None:
        return tokens, pos, _additive(full, dtype)
    m = min(n, sliding_window - 1) if sliding_cache_len is None else int(sliding_cache_len)
    k_logical = torch.cat([torch.arange(n - m, n, device=dev), n + offs])[None].expand(B, -1)
    sliding = additive_masks(build(m), q_logical, k_logical, dtype, sliding_window, None)
    if layer_types is None:
        return tokens, pos, sliding
    mask = {"full_attention": _additive(full, dtype)}
    if "sliding_attention" in layer_types:
        mask["sliding_attention"] = sliding
    return tokens, pos, mask


def piggyback_inputs(next_tokens: torch.Tensor, span_ids: Sequence[int], cache_len: int, *,
                     dtype: torch.dtype = torch.float32, prefix_mask: torch.Tensor | None = None,
                     positions: torch.Tensor | None = None, sliding_window: int | None = None,
                     layer_types: Sequence[str] | None = None, sliding_cache_len: int | None = None,
                     device: torch.device | str | None = None, tree: tuple | None = None):
    """Inputs for one forward of ``[t] ‖ span`` over a cache of ``cache_len`` entries (a forest for
    :func:`tree_over_cache_inputs`: ``t`` alone, and the span as a chain).

    Token t (position n) sees the cached prefix and itself; span token i (position n+i) sees the prefix
    and span tokens ≤ i, never t. ``tree = (tokens, parents)`` appends a tree below the last span token (its roots'
    parent is the span's end; e.g. the refusal openers the probability judge scores), which sees the prefix, the
    span and its own ancestors. After the forward the cache holds ``prefix ‖ t ‖ span (‖ tree)``; dropping all
    but the first new entry leaves ``prefix ‖ t``. ``prefix_mask`` [B, n] (1 = real) masks left padding in the
    cache; ``positions`` [B] overrides t's position (default n; use ``cache_len - n_pad`` with left padding).
    Returns ``(input_ids [B,1+h(+T)], position_ids, attention_mask)``, all on ``device`` (default: the device of
    ``next_tokens``).
    """
    next_tokens = torch.as_tensor(next_tokens, dtype=torch.long).reshape(-1)
    dev = next_tokens.device if device is None else torch.device(device)
    next_tokens = next_tokens.to(dev)
    B, h = next_tokens.shape[0], len(span_ids)
    parents = [-1, -1] + list(range(1, h))
    extra = torch.zeros((B, 0), dtype=torch.long, device=dev)
    if tree is not None:
        t_tokens, t_parents = tree
        parents += [h if p < 0 else 1 + h + p for p in t_parents]
        extra = torch.as_tensor(list(t_tokens), dtype=torch.long, device=dev)[None].expand(B, -1)
    ids = torch.cat([next_tokens[:, None], torch.tensor([list(span_ids)] * B, dtype=torch.long, device=dev), extra],
                    dim=1)
    return tree_over_cache_inputs(ids, parents, cache_len, dtype=dtype, prefix_mask=prefix_mask,
                                  positions=positions, sliding_window=sliding_window, layer_types=layer_types,
                                  sliding_cache_len=sliding_cache_len, device=dev)
