"""Continuous-batched decoding equals ``model.generate`` on each prompt alone (float32, tiny models)."""

from __future__ import annotations

import pytest
import torch

from interp.generate.decode import Sampling, decode
from interp.spans.derive import format_prompt_ids
from interp.testing import tiny_model

PROMPTS = ["Hi", "How do I bake bread at home?", "Write a poem about the sea and the wind.", "Explain vaccines.",
           "def main(): print", "The quick brown fox jumps over the lazy dog, twice."]


def hf_alone(model, prompt, budget, stops):
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=budget, eos_token_id=list(stops) or None, do_sample=False, temperature=None,
                             top_p=None, top_k=None, pad_token_id=0)[0, len(prompt):].tolist()
    cut = next((i for i, t in enumerate(out) if t in stops), None)
    return out if cut is None else out[:cut + 1]


def setup(arch, **kw):
    model, tok = tiny_model(arch, n_layers=2, **kw)
    prompts = [format_prompt_ids(tok, p) for p in PROMPTS]
    return model, tok, prompts


@pytest.mark.parametrize("arch,kw,engine", [("qwen2", {}, "slots"), ("qwen2", {}, "cache"), ("llama", {}, "slots"),
                                             ("llama", {}, "cache"), ("gemma2", {"sliding_window": 8}, "auto")])
def test_greedy_equals_generate_alone_with_rows_leaving_and_joining(arch, kw, engine):
    """Budgets differ and a stop token ends some rows early, so rows leave mid-batch and waiting prompts join
    (gemma2's sliding-window cache is decoded through the model's forward in fixed batches instead)."""
    model, tok, prompts = setup(arch, **kw)
    budgets = [3, 12, 7, 15, 1, 9]
    free = [hf_alone(model, p, b, set()) for p, b in zip(prompts, budgets)]
    stop = free[1][4]  # a token greedy decoding really produces: ends row 1 (and maybe others) early
    stops = {stop}
    ref = [hf_alone(model, p, b, stops) for p, b in zip(prompts, budgets)]
    assert any(len(r) < b for r, b in zip(ref, budgets)), "the stop token should end a row early"
    for batch_size in (1, 2, 4, 8):
        got = decode(model, prompts, budgets, stops=stops, pad_id=tok.pad_token_id or 0, batch_size=batch_size,
                     engine=engine)
        assert got == ref, (arch, engine, batch_size)


def test_sampled_tokens_do_not_depend_on_the_batch():
    model, tok, prompts = setup("qwen2")
    budgets = [6, 10, 4, 8, 5, 7]
    s = Sampling(do_sample=True, temperature=1.0, top_p=0.9, seed=3)
    runs = [decode(model, prompts, budgets, stops=[], pad_id=0, batch_size=b, sampling=s) for b in (1, 3, 6)]
    assert runs[0] == runs[1] == runs[2]
    assert [len(r) for r in runs[0]] == budgets
    other = decode(model, prompts, budgets, stops=[], pad_id=0, batch_size=3, sampling=Sampling(True, 1.0, 0.9, 4))
    assert other != runs[0]  # the seed matters


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_picks_argmax_and_the_first_of_tied_logits(dtype):
    from interp.generate.decode import greedy

    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(64, 5000, generator=g) * 3).round().to(dtype)  # rounded: many rows tie at their max
    ties = (logits == logits.max(-1, keepdim=True).values).sum(-1)
    assert (ties > 1).sum() > 10
    assert torch.equal(greedy(logits), logits.argmax(-1))
    assert torch.equal(greedy(logits[:, ::2]), logits[:, ::2].argmax(-1))  # a strided view, as decode's logits
    row = torch.zeros(1, 9, dtype=dtype)
    row[0, [2, 6]] = 1.0
    assert greedy(row).tolist() == [2]


def test_zero_budget_fast_linear_restored_and_bad_input():
    model, tok, prompts = setup("qwen2")
    assert decode(model, prompts[:2], [0, 2], stops=[], pad_id=0)[0] == []
    with pytest.raises(ValueError, match="budgets"):
        decode(model, prompts[:2], [1], stops=[], pad_id=0)
    with pytest.raises(ValueError, match="batch_size"):
        decode(model, prompts[:2], [1, 1], stops=[], pad_id=0, batch_size=0)
    with pytest.raises(ValueError, match="at least one token"):
        decode(model, [[]], [1], stops=[], pad_id=0)
    with pytest.raises(ValueError, match="engine must be one of"):
        decode(model, prompts[:1], [1], stops=[], pad_id=0, engine="fast")
    gemma, _, _ = setup("gemma2", sliding_window=8)
    with pytest.raises(ValueError, match="engine 'slots' cannot run this model: Gemma2ForCausalLM"):
        decode(gemma, prompts[:1], [1], stops=[], pad_id=0, engine="slots")
    for m in model.modules():
        assert "forward" not in m.__dict__ or not isinstance(m, torch.nn.Linear)  # plain nn.Linear again


def test_generation_in_bfloat16_uses_one_cast_copy():
    from interp import UserError
    from interp.data.records import Record
    from interp.generate.continuations import generate_continuations, generation_model, stop_token_ids
    from interp.spans.derive import derive_safety_spans

    model, tok, prompts = setup("qwen2")
    assert generation_model(model) is model and generation_model(model, "float32") is model
    bf = generation_model(model, "bfloat16")
    assert bf is generation_model(model, "bfloat16") and bf is not model
    assert next(bf.parameters()).dtype == torch.bfloat16 and next(model.parameters()).dtype == torch.float32
    with pytest.raises(UserError, match="gen-dtype"):
        generation_model(model, "int4")
    recs = [Record(id=f"r{i}", prompt=p, label="benign") for i, p in enumerate(PROMPTS[:3])]
    out = generate_continuations(model, tok, recs, mode="own", max_new_tokens=5, dtype="bfloat16", progress=False)
    stops = stop_token_ids(model, tok, derive_safety_spans(tok))
    ref = decode(bf, [c.prompt_ids for c in out], [5] * 3, stops=stops, pad_id=tok.pad_token_id or 0)
    assert [c.response_ids for c in out] == [r[:-1] if r and r[-1] in stops else r for r in ref]


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampled"])
def test_requests_decoded_together_equal_each_request_alone(do_sample):
    """Requests of different modes, openers, budgets and seeds in one pass give what each gives alone."""
    from interp.data.records import Record
    from interp.generate.continuations import Request, generate_continuations, generate_requests

    model, tok, _ = setup("qwen2")
    recs = [Record(id=f"r{i}", prompt=p, label="harmful" if i % 2 else "benign") for i, p in enumerate(PROMPTS)]
    kw = {"do_sample": do_sample, "temperature": 1.0, "top_p": 0.9}
    requests = [Request(recs[:3], mode="prefill", opener="Sure, here is", max_new_tokens=6, seed=1, **kw),
                Request(recs[3:], mode="own", max_new_tokens=9, seed=7, **kw),
                Request(recs[1:4], mode="matched", opener="Of course:", max_new_tokens=4, seed=2, **kw)]
    together = generate_requests(model, tok, requests, batch_size=4, progress=False)
    alone = [generate_continuations(model, tok, r.records, mode=r.mode, opener=r.opener, max_new_tokens=r.max_new_tokens,
                                    seed=r.seed, batch_size=1, progress=False, **kw) for r in requests]
    assert [[c.to_dict() for c in cs] for cs in together] == [[c.to_dict() for c in cs] for cs in alone]
    assert [len(cs) for cs in together] == [3, 3, 4]  # matched: a second (#prefill) copy of the benign record
    if do_sample:  # the per-request seed reaches its jobs: another seed for request 2 changes only request 2
        requests[1].seed = 8
        moved = generate_requests(model, tok, requests, batch_size=4, progress=False)
        assert moved[0] == together[0] and moved[2] == together[2] and moved[1] != together[1]
    mixed = [requests[0], Request(recs[:1], mode="own", do_sample=not do_sample)]
    from interp import UserError

    with pytest.raises(UserError, match="share do_sample"):
        generate_requests(model, tok, mixed, progress=False)


def test_auto_generation_dtype_picks_bf16_only_with_native_support(monkeypatch):
    from interp import UserError
    from interp.generate import continuations as c

    avx2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
    assert not c.cpu_has_native_bf16(avx2) and not c.cpu_has_native_bf16("no flags line")
    assert c.cpu_has_native_bf16(avx2.replace("fma", "fma avx512f avx512_bf16"))
    assert c.cpu_has_native_bf16(avx2.replace("fma", "fma amx_tile amx_bf16"))
    monkeypatch.setattr(c, "cpu_has_native_bf16", lambda cpuinfo=None: False)
    assert c.resolve_gen_dtype("auto", "cpu") == "float32" and c.resolve_gen_dtype("auto", "cuda:1") == "bfloat16"
    assert c.resolve_gen_dtype("bfloat16", "cpu") == "bfloat16" and c.resolve_gen_dtype("model", "cpu") == "model"
    model, _, _ = setup("qwen2")
    assert c.generation_model(model, "auto") is model  # float32 here: the model itself
    monkeypatch.setattr(c, "cpu_has_native_bf16", lambda cpuinfo=None: True)
    assert c.resolve_gen_dtype("auto", "cpu") == "bfloat16"
    assert next(c.generation_model(model, "auto").parameters()).dtype == torch.bfloat16
    with pytest.raises(UserError, match="gen-dtype must be one of model, auto, bfloat16, float32"):
        c.resolve_gen_dtype("fp8", "cpu")


def test_slot_engine_keeps_the_rows_its_memory_budget_holds(monkeypatch):
    """Where the slot cache of the batch would pass the budget, the slot engine decodes fewer rows in flight
    (warned), the same tokens; where not one row fits, "auto" takes the DynamicCache and "slots" refuses."""
    from interp.generate import decode as d
    from interp.generate.slots import SlotDecoder

    model, tok, prompts = setup("qwen2")
    used = []
    for name in ("_decode_slots", "_decode_cache"):
        real = getattr(d, name)
        monkeypatch.setattr(d, name, lambda *a, real=real, name=name: (used.append((name, a[3])), real(*a))[1])
    budgets = [4] * len(prompts)
    ref = decode(model, prompts, budgets, stops=[], pad_id=0, batch_size=3)
    row = SlotDecoder.cache_bytes(model, 1, max(map(len, prompts)) + 4)  # one row: longest prompt + its budget
    monkeypatch.setattr(d, "slot_cache_budget", lambda device: 2 * row + row // 2)
    trace = d.DecodeTrace()
    with pytest.warns(UserWarning, match=r"decoding 2 rows in flight instead of 3: 3 slots of \d+ positions"):
        assert decode(model, prompts, budgets, stops=[], pad_id=0, batch_size=3, trace=trace) == ref
    assert max(rows for rows, _ in trace.steps) == 2 and trace.batch_size == 2 and trace.engine == "slots"
    monkeypatch.setattr(d, "slot_cache_budget", lambda device: row - 1)
    trace = d.DecodeTrace()
    assert decode(model, prompts, budgets, stops=[], pad_id=0, batch_size=3, trace=trace) == ref
    assert trace.summary().startswith("cache engine, 3 rows in flight: prefills:")
    assert used == [("_decode_slots", 3), ("_decode_slots", 2), ("_decode_cache", 3)]
    with pytest.raises(ValueError, match="engine 'slots' cannot decode one row: 3 slots of"):
        decode(model, prompts, budgets, stops=[], pad_id=0, batch_size=3, engine="slots")


def test_slot_cache_budget_is_a_share_of_the_free_memory(monkeypatch):
    from interp.generate import decode as d

    monkeypatch.setattr(d, "available_memory", lambda: 10 << 30)
    assert d.slot_cache_budget("cpu") == int(d.SLOT_CACHE_SHARE * (10 << 30))
    monkeypatch.setattr(d, "available_memory", lambda: None)
    assert d.slot_cache_budget("cpu") == d.SLOT_CACHE_FALLBACK == d.slot_cache_budget("meta")


@pytest.mark.parametrize("engine", ["slots", "cache"])
def test_newcomers_are_prefilled_shortest_first(engine, monkeypatch):
    """Prompts of alternating lengths fill fewer prefill pieces sorted by length than in arrival order."""
    from interp.generate import decode as d

    model, tok, prompts = setup("qwen2")
    long_prompt = format_prompt_ids(tok, " ".join(["word"] * 150))
    mixed = [prompts[0], long_prompt] * 3  # short, long, short, ...
    lengths = [len(p) for p in mixed]
    budget = max(3 * lengths[0], lengths[1])  # three short prompts, or one long one, per forward
    assert 2 * lengths[1] > budget
    monkeypatch.setattr(d, "PREFILL_TOKENS_CPU", budget)
    trace = d.DecodeTrace()
    got = decode(model, mixed, [2] * 6, stops=[], pad_id=0, batch_size=6, engine=engine, trace=trace)
    assert [n for n, _ in trace.prefills] == [3, 1, 1, 1]  # in arrival order it would be six of one row
    assert len(d.prefill_pieces(lengths, budget)) == 6
    assert got == [decode(model, [p], [2], stops=[], pad_id=0, engine=engine)[0] for p in mixed]


def test_int8_linear_is_close_and_each_row_is_its_own():
    from interp.model.int8_linear import Int8Linear

    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 24)
    q = Int8Linear(lin)
    x = torch.randn(5, 3, 48)
    y, ref = q(x), lin(x)
    assert y.shape == ref.shape and ((y - ref).norm() / ref.norm()) < 0.02
    assert torch.equal(q(x[2:3]), y[2:3])  # a row's result does not depend on its batch
    x[0, 0] *= 100  # one large row does not coarsen the others (per-row scales)
    assert torch.equal(q(x)[1:], y[1:])


def test_int8_generation_decodes_each_row_as_if_alone():
    from interp import UserError
    from interp.generate.continuations import generation_model
    from interp.model.int8_linear import Int8Linear

    model, tok, prompts = setup("qwen2")
    q = generation_model(model, "int8")
    assert q is generation_model(model, "int8") and q is not model
    assert isinstance(q.lm_head, Int8Linear) and not any(type(m) is torch.nn.Linear for m in q.modules())
    budgets = [5, 9, 3, 7, 6, 8]
    alone = [decode(q, [p], [b], stops=[], pad_id=0, batch_size=1, engine="cache")[0] for p, b in zip(prompts, budgets)]
    for engine in ("slots", "cache"):
        assert decode(q, prompts, budgets, stops=[], pad_id=0, batch_size=4, engine=engine) == alone
    if torch.cuda.is_available():  # pragma: no cover - CPU only
        with pytest.raises(UserError, match="CPU only"):
            generation_model(model.cuda(), "int8")


@pytest.mark.parametrize("engine", ["slots", "cache"])
def test_trace_accounts_for_every_token_and_leaves_the_tokens_alone(engine):
    """Each prefill makes one token per prompt it admits and each step one per row in flight, so the trace's
    tokens are the answers' tokens; the batch fills (steps at full rows), then drains (fewer rows)."""
    from interp.generate.decode import DecodeTrace

    model, tok, prompts = setup("qwen2")
    budgets = [3, 12, 7, 15, 1, 9]
    plain = decode(model, prompts, budgets, stops=[], pad_id=0, batch_size=3, engine=engine)
    trace = DecodeTrace()
    got = decode(model, prompts, budgets, stops=[], pad_id=0, batch_size=3, engine=engine, trace=trace)
    assert got == plain
    ph = trace.phases()
    assert ph["prefill"]["tokens"] == len(prompts)  # every prompt admitted once, one token each
    assert ph["prefill"]["tokens"] + ph["full"]["tokens"] + ph["partial"]["tokens"] == sum(map(len, got))
    assert ph["full"]["calls"] > 0 and ph["partial"]["calls"] > 0  # 3 rows in flight, then the tail
    assert all(rows <= 3 for rows, _ in trace.steps) and all(t >= 0 for _, t in trace.steps + trace.prefills)
    assert trace.batch_size == 3 and trace.engine == engine
    assert trace.summary().startswith(f"{engine} engine, 3 rows in flight: ") and "steps at 3 rows" in trace.summary()


def test_prefill_pieces_cover_the_newcomers_in_order_within_the_budget():
    from interp.generate.decode import prefill_budget, prefill_pieces

    lengths = [5, 9, 3, 30, 4, 4, 4, 8]
    pieces = prefill_pieces(lengths, 16)
    assert [i for p in pieces for i in p] == list(range(len(lengths)))  # consecutive, each newcomer once
    for p in pieces:  # within the budget, or a single row longer than it
        assert len(p) * max(lengths[i] for i in p) <= 16 or len(p) == 1
    assert [list(p) for p in pieces] == [[0], [1], [2], [3], [4, 5, 6], [7]]  # greedy: as many rows as fit
    assert prefill_pieces(lengths, None) == [range(8)] and prefill_pieces([], 16) == []
    assert prefill_budget("cpu") > 0 and prefill_budget("meta") is None


@pytest.mark.parametrize("engine", ["slots", "cache"])
def test_prompts_prefilled_in_pieces_give_the_tokens_of_each_prompt_alone(engine, monkeypatch):
    """A budget of one prompt's tokens admits newcomers one forward each; rows still decode as if alone."""
    from interp.generate import decode as d

    model, tok, prompts = setup("qwen2")
    budgets = [3, 12, 7, 15, 1, 9]
    ref = [hf_alone(model, p, b, set()) for p, b in zip(prompts, budgets)]
    monkeypatch.setattr(d, "PREFILL_TOKENS_CPU", max(map(len, prompts)))
    trace = d.DecodeTrace()
    got = decode(model, prompts, budgets, stops=[], pad_id=0, batch_size=4, engine=engine, trace=trace)
    assert got == ref
    assert len(trace.prefills) == len(prompts) and all(rows == 1 for rows, _ in trace.prefills)
