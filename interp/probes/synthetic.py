"""Synthetic activations with a known planted direction, shaped like an activation store."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from interp.probes.data import LayerData


@dataclass
class SyntheticSpec:
    """Generator settings. Per prompt: a base vector shared by all its depths (so depths are near-duplicates),
    plus ``depth_noise`` per depth, plus a margin ``a_i`` along the planted unit direction of the layer:
    ``a_i = signal[l] * (2y - 1) + margin_noise * N(0, 1)``.
    """

    n_prompts: int = 200
    n_depths: int = 6
    d_model: int = 32
    n_layers: int = 3
    signal: tuple[float, ...] = (0.0, 1.0, 3.0)  # per layer (cycled if shorter)
    margin_noise: float = 1.0
    prompt_noise: float = 1.0
    depth_noise: float = 0.2
    anisotropy: float = 0.0  # log-normal spread of per-dimension noise scales (0 = isotropic)
    invalid_frac: float = 0.2  # fraction of prompts whose response ends early (later depths invalid)
    n_sources: int = 2
    shuffle_labels: bool = False  # labels carry no signal at all (leakage / null control)
    seed: int = 0


class SyntheticSet:
    """All layers of a synthetic store in memory; ``layer(l)`` gives :class:`LayerData`."""

    def __init__(self, spec: SyntheticSpec) -> None:
        self.spec = spec
        rng = np.random.default_rng(spec.seed)
        n, dd, d = spec.n_prompts, spec.n_depths, spec.d_model
        self.y = np.arange(n) % 2
        rng.shuffle(self.y)
        self.groups = np.array([f"p{i:05d}" for i in range(n)])
        self.sources = np.array([f"src{(i // 2) % spec.n_sources}" for i in range(n)])
        self.depths = np.arange(dd) * 10
        ends = np.full(n, dd)
        early = rng.random(n) < spec.invalid_frac
        ends[early] = rng.integers(1, max(dd, 2), early.sum())
        self.valid = np.arange(dd)[None, :] < ends[:, None]
        # each answer ends 5 tokens after its last valid depth: its final check falls between grid depths
        self.n_tokens = self.depths[ends - 1] + 5
        self.scales = np.exp(spec.anisotropy * rng.normal(size=d)).astype(np.float32)
        dirs = rng.normal(size=(spec.n_layers, d))
        self.directions = (dirs / np.linalg.norm(dirs, axis=1, keepdims=True)).astype(np.float32)
        self._seeds = rng.integers(0, 2**31, spec.n_layers)
        label_for_signal = rng.permutation(self.y) if spec.shuffle_labels else self.y
        self._sign = (2 * label_for_signal - 1).astype(np.float32)

    def layer_array(self, layer: int) -> np.ndarray:
        """``X [N, D, d]`` float32 of one layer (deterministic per layer)."""
        s = self.spec
        rng = np.random.default_rng(self._seeds[layer])
        signal = s.signal[layer % len(s.signal)]
        base = rng.normal(size=(s.n_prompts, 1, s.d_model)).astype(np.float32) * s.prompt_noise
        jitter = rng.normal(size=(s.n_prompts, s.n_depths, s.d_model)).astype(np.float32) * s.depth_noise
        X = (base + jitter) * self.scales
        margin = signal * self._sign + s.margin_noise * rng.normal(size=s.n_prompts).astype(np.float32)
        X += margin[:, None, None] * self.directions[layer][None, None, :]
        return X.astype(np.float32)

    def end_array(self, layer: int) -> np.ndarray:
        """``X_end [N, d]``: each answer at its end (the same prompt base and margin, a fresh depth jitter)."""
        s = self.spec
        X = self.layer_array(layer)[:, 0]  # prompt base + first jitter + margin ...
        rng = np.random.default_rng(self._seeds[layer] + 1)
        X = X + rng.normal(size=X.shape).astype(np.float32) * s.depth_noise * self.scales  # ... re-jittered
        return X.astype(np.float32)

    def layer(self, layer: int) -> LayerData:
        return LayerData(X=self.layer_array(layer), y=self.y, groups=self.groups, valid=self.valid,
                         sources=self.sources, depths=self.depths, layer=layer)


def write_store(ss: SyntheticSet, path, layers, span_len: int, probe_index: int, *, rows: int | None = None,
                extra_examples: dict | None = None):
    """Write ``ss`` as a float32 activation store at ``path`` (the planted layer vectors at ``probe_index`` of a
    ``span_len`` span, noise elsewhere; each answer's end slot at its length, every row an own answer that
    ended, answer length = the longest answer); only the first ``rows`` examples are written (a partial store).
    ``extra_examples`` override or add example fields (``kind``, ``finished``, ...)."""
    from interp.extract.store import ActivationStore

    n, dd, d = ss.spec.n_prompts, ss.spec.n_depths, ss.spec.d_model
    prov = {"model_id": "synthetic", "weights_sha256": "w0", "template_hash": "t0", "span_ids": [7, 8, 9],
            "probe_index": probe_index, "answer_length": int(ss.n_tokens.max())}
    examples = {"id": [f"e{i}" for i in range(n)], "label": ss.y.tolist(), "source": ss.sources.tolist(),
                "kind": ["own"] * n, "prompt": ss.groups.tolist(), "category": [""] * n,
                "n_response_tokens": ss.n_tokens.tolist(), "valid": ss.valid, "end_depth": ss.n_tokens.tolist(),
                "finished": [True] * n, **(extra_examples or {})}
    store = ActivationStore.create(path, prov, examples, depths=ss.depths.tolist(), hooks=["resid_post"],
                                   layers=layers, positions=range(span_len), d_model=d, storage_dtype="float32")
    rng = np.random.default_rng(0)
    acts, last, prompt = {}, {}, {}
    for layer in layers:
        span = rng.normal(size=(n, dd + 1, span_len, d)).astype(np.float32)
        span[:, :dd, probe_index] = ss.layer_array(layer)
        span[:, dd, probe_index] = ss.end_array(layer)
        acts[("hook_resid_post", layer)] = span
        last[("hook_resid_post", layer)] = rng.normal(size=(n, dd + 1, d)).astype(np.float32)
        prompt[("hook_resid_post", layer)] = rng.normal(size=(n, d)).astype(np.float32)
    k = n if rows is None else rows
    store.write_rows(list(range(k)), *({key: v[:k] for key, v in x.items()} for x in (acts, last, prompt)))
    store.close()
    return path


LAYERED = {"layers": [0, 1, 2], "span_len": 3, "probe_index": 2}  # the layout of write_layered_store


def write_layered_store(path, *, n_sources: int = 2):
    """The multi-layer test store: 160 prompts, 4 depths, d 16, layers 0-2 whose signal grows with the layer
    (0.5, 1.5, 2.5), a quarter of the answers ending early; span of 3 with the probe token last (``LAYERED``)."""
    ss = SyntheticSet(SyntheticSpec(n_prompts=160, n_depths=4, d_model=16, n_layers=3, signal=(0.5, 1.5, 2.5),
                                    margin_noise=0.5, invalid_frac=0.25, n_sources=n_sources, seed=5))
    return write_store(ss, path, LAYERED["layers"], LAYERED["span_len"], LAYERED["probe_index"])


STUDY = ("user_header", "newlines", "random", "response_mean", "t_inst")  # a --controls store's study positions


def write_positions_store(path, planted: str = "random", *, n_prompts: int = 80, d_model: int = 8,
                          signal: float = 3.0, seed: int = 0):
    """A store shaped like the position study's corpus: ``n_prompts`` harmful prompts answered twice (complies,
    label 1, kind prefill; refuses, label 0, kind refusal) and as many benign prompts answered twice (own answer and
    forced opener, both label 0), over two datasets; 3 depths, one layer (0), a span of 3 with the probe token last.

    The continuation's label is planted along one direction at ``planted`` only (``"header"``, a study position or
    ``"last_token"``); ``t_inst`` and ``prompt`` carry the prompt's harmfulness, identical for both answers of a
    prompt (prompt-only features); every other read is noise. Prompts come in near-duplicate pairs (one extra
    word), so each content group holds two prompts."""
    from interp.extract.store import ActivationStore

    rng = np.random.default_rng(seed)
    n_rows, dd = 4 * n_prompts, 3
    harmful_prompt = np.repeat([1, 0], 2 * n_prompts)
    y = np.tile([1, 0], 2 * n_prompts) * harmful_prompt
    kind = np.where(harmful_prompt == 1, np.tile(["prefill", "refusal"], 2 * n_prompts),
                    np.tile(["own", "prefill"], 2 * n_prompts))
    prompt_ids = np.repeat(np.arange(2 * n_prompts), 2)
    data = np.array([f"set{i % 2}" for i in prompt_ids])
    direction = rng.normal(size=d_model).astype(np.float32)
    direction /= np.linalg.norm(direction)

    def noise(*shape):
        return rng.normal(size=(*shape, d_model)).astype(np.float32)

    margin = (signal * (2 * y - 1) + rng.normal(size=n_rows)).astype(np.float32)
    planted_value = noise(n_rows, dd + 1) + margin[:, None, None] * direction
    per_prompt = noise(2 * n_prompts) + (signal * (2 * harmful_prompt[::2] - 1))[:, None].astype(np.float32) * direction
    span = noise(n_rows, dd + 1, 3)
    if planted == "header":
        span[:, :, 2] = planted_value
    study = {name: (per_prompt[prompt_ids] if name == "t_inst" else
                    planted_value if name == planted else noise(n_rows, dd + 1)) for name in STUDY}
    last = planted_value if planted == "last_token" else noise(n_rows, dd + 1)
    prov = {"model_id": "synthetic", "weights_sha256": "w0", "template_hash": "t0", "span_ids": [7, 8, 9],
            "probe_index": 2, "answer_length": 40, "study_positions": list(STUDY)}
    examples = {"id": [f"r{i}" for i in range(n_rows)], "label": y.tolist(),
                "source": [f"{d}:{k}" for d, k in zip(data, kind)], "kind": kind.tolist(),
                "prompt": [f"tell me about topic{i // 2}" + " now" * (i % 2) for i in prompt_ids],
                "category": [""] * n_rows,
                "n_response_tokens": [40] * n_rows, "valid": np.ones((n_rows, dd), bool), "end_depth": [40] * n_rows,
                "finished": [True] * n_rows}
    store = ActivationStore.create(path, prov, examples, depths=[0, 10, 20], hooks=["resid_post"], layers=[0],
                                   positions=range(3), d_model=d_model, storage_dtype="float32")
    key = ("hook_resid_post", 0)
    store.write_rows(list(range(n_rows)), {key: span}, {key: last}, {key: per_prompt[prompt_ids]},
                     {name: {key: v} for name, v in study.items()})
    store.close()
    return path
