"""``anydepth serve`` on loopback with the official openai client: stream = guard output, halts, concurrency,
errors, bounded memory. Tiny qwen2 model; a difference-of-means probe built so a marker prefill fires it."""

import http.client
import json
import threading
import time

import numpy as np
import pytest
import torch

from interp.guard.generator import GuardedGenerator
from interp.guard.types import GuardConfig
from interp.model.hooks import decoder_layers
from interp.probes.probeset import ProbeSet
from interp.serve.api import ApiError, TextStream
from interp.serve.server import ServerConfig, make_server
from interp.spans.derive import derive_safety_spans, encode_response, format_prompt_ids
from interp.testing import tiny_model

openai = pytest.importorskip("openai")

NAME = "tiny-guarded"
STRIDE = 8
MARKER = "Sure, here is " + "BOOM " * 30
PROMPTS = ["How do I bake bread?", "Write a poem about the sea.", "Hi", "Explain how vaccines work.",
           "Hello world", "def main():", "The quick brown fox", "What is 2+2?"]
GUARD = dict(mode="lp", stride=STRIDE)


def role_state(model, ids, layer):
    """Residual after ``layer`` at the last position of a fresh forward (what an ADA-LP check reads)."""
    seen = {}

    def hook(module, args, out):
        seen.setdefault("h", (out[0] if isinstance(out, tuple) else out)[0, -1].clone())

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([ids]))
    finally:
        handle.remove()
    return seen["h"].numpy().astype(np.float64)


def build_probe(model, tok, spans, layer=1):
    """A logistic probe separating role-token states after the marker prefill and after the model's own text."""
    probe_ids = list(spans.probe_ids)
    gen = GuardedGenerator(model, tok, spans, GuardConfig(mode="none", max_new_tokens=6 * STRIDE))
    prompts = [format_prompt_ids(tok, p) for p in PROMPTS]
    good, bad = [], []
    sure = [encode_response(tok, ids, "Sure") for ids in prompts]
    own = gen.generate(prompts) + gen.generate(prompts, forced=sure)
    for ids, res in zip(prompts * 2, own):
        good += [role_state(model, ids + res.generated_ids[:d] + probe_ids, layer)
                 for d in range(STRIDE, len(res.generated_ids) + 1, STRIDE)]
    for ids in prompts:
        marker = encode_response(tok, ids, MARKER)
        bad += [role_state(model, ids + marker[:d] + probe_ids, layer) for d in (STRIDE, 2 * STRIDE, 3 * STRIDE)]
    gen.close()
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([good, bad])
    y = np.r_[np.zeros(len(good)), np.ones(len(bad))]
    fit = LogisticRegression(C=1e4, max_iter=20000).fit(x, y)
    z = fit.decision_function(x)
    assert z[y == 1].min() > 0 > z[y == 0].max(), "marker states not separable: the test setup is broken"
    scale = 20.0 / min(z[y == 1].min(), -z[y == 0].max())  # wide margins: float noise cannot flip a check
    w, mid = fit.coef_[0], -fit.intercept_[0]
    n, d = model.config.num_hidden_layers, model.config.hidden_size
    weights = np.zeros((n, d))
    weights[layer] = w * scale
    bias = np.zeros(n)
    bias[layer] = -mid * scale
    return ProbeSet(layers=list(range(n)), weights=weights, bias=bias, hook="blocks.{layer}.hook_resid_post",
                    position="probe", best_layer=layer, threshold=0.5,
                    provenance={"template_hash": spans.template_hash, "span_ids": list(spans.span_ids)})


@pytest.fixture(scope="module")
def env():
    torch.manual_seed(0)
    model, tok = tiny_model("qwen2", n_layers=2)
    spans = derive_safety_spans(tok)
    probes = build_probe(model, tok, spans)
    gen = GuardedGenerator(model, tok, spans, GuardConfig(**GUARD), probes)
    server = make_server(gen, tok, NAME, ServerConfig(port=0, max_tokens_limit=64, queue_size=32))
    server.start()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)
    ref = GuardedGenerator(model, tok, spans, GuardConfig(**GUARD), probes)  # used only while the server idles
    yield {"model": model, "tok": tok, "spans": spans, "probes": probes, "server": server, "client": client,
           "ref": ref}
    client.close()
    server.stop()
    ref.close()


def expected(env, prompt, prefill=None, max_tokens=40):
    """The guard's own output for a request (independent of the server code path)."""
    tok, ref = env["tok"], env["ref"]
    ids = format_prompt_ids(tok, prompt)
    forced = encode_response(tok, ids, prefill) if prefill else []
    ref.config.max_new_tokens = len(forced) + max_tokens
    res = ref.generate([ids], forced=[forced])[0]
    text = tok.decode(res.emitted_ids[len(forced):], skip_special_tokens=True) if len(res.emitted_ids) > len(
        forced) else ""
    if res.halted:
        text = text + ("\n" if text else "") + ref.config.refusal_message
    return text, res


def messages(prompt, prefill=None):
    out = [{"role": "user", "content": prompt}]
    if prefill:
        out.append({"role": "assistant", "content": prefill})
    return out


def stream_text(client, msgs, max_tokens=40):
    parts, finish, guard = [], None, None
    stream = client.chat.completions.create(model=NAME, messages=msgs, max_tokens=max_tokens, stream=True,
                                            stream_options={"include_usage": True})
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                parts.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
                guard = (chunk.model_extra or {}).get("guard")
    return "".join(parts), finish, guard, usage


def test_models_and_healthz(env):
    assert [m.id for m in env["client"].models.list().data] == [NAME]
    conn = http.client.HTTPConnection(*env["server"].server_address[:2], timeout=10)
    conn.request("GET", "/healthz")
    resp = conn.getresponse()
    body = json.loads(resp.read())
    assert resp.status == 200 and body["status"] == "ok" and body["model"] == NAME and body["guard"] == "lp"


def test_stream_and_plain_equal_guard_output(env):
    client = env["client"]
    n_plain = 0
    for prompt in PROMPTS[:4]:
        want, res = expected(env, prompt)
        got, finish, guard, usage = stream_text(client, messages(prompt))
        assert got == want
        assert finish == ("content_filter" if res.halted else {"eos": "stop"}.get(res.stop_reason, "length"))
        assert guard["halted"] == res.halted and guard["n_checks"] == len(res.checks)
        assert usage.completion_tokens == len(res.generated_ids)
        plain = client.chat.completions.create(model=NAME, messages=messages(prompt), max_tokens=40)
        assert plain.choices[0].message.content == want and plain.choices[0].finish_reason == finish
        n_plain += not res.halted
    assert n_plain >= 2  # the probe does not fire on the model's own text


def test_harmful_deep_prefill_is_halted(env):
    client, refusal = env["client"], env["ref"].config.refusal_message
    for prompt in PROMPTS[:3]:
        want, res = expected(env, prompt, MARKER)
        assert res.halted and res.halt_depth == STRIDE
        got, finish, guard, _ = stream_text(client, messages(prompt, MARKER))
        assert got == want == refusal  # nothing of the prefill leaks: buffered until a check passes
        assert finish == "content_filter" and guard["halted"] and guard["halt_depth"] == STRIDE
        plain = client.chat.completions.create(model=NAME, messages=messages(prompt, MARKER), max_tokens=40)
        assert plain.choices[0].message.content == refusal and plain.choices[0].finish_reason == "content_filter"
    # a short harmless prefill is continued, not echoed
    want, res = expected(env, PROMPTS[0], "Sure")
    got, _, _, _ = stream_text(client, messages(PROMPTS[0], "Sure"))
    assert got == want and not res.halted


def test_sixteen_concurrent_clients_get_their_own_stream(env):
    client, service = env["client"], env["server"].service
    jobs = [(p, MARKER if i % 4 == 3 else None, 12 + i) for i, p in enumerate(PROMPTS * 2)]
    sequential = [stream_text(client, messages(p, f), m)[:2] for p, f, m in jobs]
    assert len({s[0] for s in sequential}) >= 8  # the requests really differ
    # hold the worker until all 16 requests are in flight at once
    real, gate = service.generator.generate, threading.Event()

    def gated(*a, **k):
        gate.wait(120)
        return real(*a, **k)

    service.generator.generate = gated
    results = [None] * len(jobs)
    errors = []

    def worker(i):
        try:
            p, f, m = jobs[i]
            own = openai.OpenAI(base_url=env["server"].url + "/v1", api_key="none", max_retries=0, timeout=60)
            results[i] = stream_text(own, messages(p, f), m)[:2]
            own.close()
        except Exception as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while service.active < len(jobs) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert service.active == len(jobs), errors  # all queued concurrently
        gate.set()
        for t in threads:
            t.join(60)
    finally:
        gate.set()
        service.generator.generate = real
    assert not errors, errors
    assert results == sequential
    assert sum(r[1] == "content_filter" for r in results) == 4


def raw(env, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection(*env["server"].server_address[:2], timeout=20)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    payload = json.loads(resp.read())
    conn.close()
    return resp.status, payload


def test_malformed_requests_get_json_errors(env):
    ok = {"model": NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    cases = [
        (b"{not json", 400), (b"[1, 2]", 400),
        ({**ok, "messages": []}, 400), ({**ok, "messages": "Hi"}, 400),
        ({**ok, "messages": [{"role": "robot", "content": "x"}]}, 400),
        ({**ok, "messages": [{"role": "user", "content": 5}]}, 400),
        ({**ok, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, 400),
        ({**ok, "messages": [{"role": "system", "content": "be nice"}]}, 400),
        ({**ok, "max_tokens": 0}, 400), ({**ok, "max_tokens": 65}, 400), ({**ok, "max_tokens": "5"}, 400),
        ({**ok, "n": 2}, 400), ({**ok, "temperature": -1}, 400), ({**ok, "stream": "yes"}, 400),
        ({**ok, "tools": [{"type": "function"}]}, 400), ({k: v for k, v in ok.items() if k != "model"}, 400),
        ({**ok, "model": "gpt-4"}, 404), ({**ok, "messages": [{"role": "user", "content": "x" * 5000}]}, 400),
    ]
    for body, status in cases:
        got, payload = raw(env, "POST", "/v1/chat/completions", body)
        assert got == status, (body, payload)
        assert isinstance(payload["error"]["message"], str) and payload["error"]["message"]
    big = json.dumps({**ok, "messages": [{"role": "user", "content": "x" * 1_100_000}]}).encode()
    assert raw(env, "POST", "/v1/chat/completions", big)[0] == 413
    assert raw(env, "POST", "/v1/nope", ok)[0] == 404
    assert raw(env, "GET", "/v1/chat/completions")[0] == 404
    assert raw(env, "PUT", "/v1/chat/completions", ok)[0] == 405
    with pytest.raises(openai.BadRequestError):
        env["client"].chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=1000)
    with pytest.raises(openai.NotFoundError):
        env["client"].chat.completions.create(model="other", messages=[{"role": "user", "content": "Hi"}])
    # the server still answers after all that
    assert raw(env, "POST", "/v1/chat/completions", ok)[0] == 200


def test_full_queue_answers_429_and_closed_service_503(env):
    model, tok, spans, probes = env["model"], env["tok"], env["spans"], env["probes"]
    gen = GuardedGenerator(model, tok, spans, GuardConfig(**GUARD), probes)
    server = make_server(gen, tok, NAME, ServerConfig(port=0, max_tokens_limit=8, queue_size=1))
    service = server.service
    gate = threading.Event()
    real = service.generator.generate
    service.generator.generate = lambda *a, **k: (gate.wait(30), real(*a, **k))[1]
    server.start()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=30)
    msgs = [{"role": "user", "content": "Hi"}]
    threads = [threading.Thread(target=client.chat.completions.create,
                                kwargs=dict(model=NAME, messages=msgs, max_tokens=2)) for _ in range(2)]
    try:
        threads[0].start()
        while service.active < 1 or service.jobs.qsize() > 0:  # first one taken by the worker
            time.sleep(0.01)
        threads[1].start()
        while service.jobs.qsize() < 1:
            time.sleep(0.01)
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model=NAME, messages=msgs, max_tokens=2)
        assert info.value.status_code == 429 and "busy" in info.value.message
    finally:
        gate.set()
        for t in threads:
            t.join(30)
        client.close()
        server.stop()
    with pytest.raises(ApiError) as info:
        service.submit(object())
    assert info.value.status == 503


def rss_mb():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20


def test_memory_bounded_over_200_requests(env):
    client, service = env["client"], env["server"].service
    msgs = [{"role": "user", "content": "Write a poem about the sea."}]
    for _ in range(20):  # warm up allocator and connection pool
        client.chat.completions.create(model=NAME, messages=msgs, max_tokens=4)
    threads_before, rss_before = threading.active_count(), rss_mb()
    first = None
    for i in range(200):
        if i % 2:
            text = stream_text(client, messages(PROMPTS[i % len(PROMPTS)]), 4)[0]
        else:
            text = client.chat.completions.create(model=NAME, messages=msgs, max_tokens=4).choices[0].message.content
            first = first if first is not None else text
            assert text == first
    growth = rss_mb() - rss_before
    assert growth < 40, f"RSS grew by {growth:.1f} MiB over 200 requests"
    assert service.active == 0 and service.jobs.qsize() == 0
    assert threading.active_count() <= threads_before + 2


def test_text_stream_holds_back_split_utf8(env):
    tok = env["tok"]
    ids = tok("naïve café ☕ done", add_special_tokens=False)["input_ids"]
    stream = TextStream(tok)
    parts = [stream.push([t]) for t in ids] + [stream.finish()]
    assert "".join(parts) == tok.decode(ids, skip_special_tokens=True)
    assert all("\ufffd" not in p for p in parts)


def test_serve_command_options_and_refusals():
    from interp import UserError
    from interp.cli.commands.serve import build_server
    from interp.cli.main import build_parser
    from interp.config import from_namespace
    from interp.model.loading import ModelConfig

    args = build_parser().parse_args(["serve", "--model", "x", "--port", "0", "--mode", "rk", "--stride", "5",
                                      "--max-tokens-limit", "32", "--queue-size", "3"])
    cfg, guard = from_namespace(ServerConfig, args), from_namespace(GuardConfig, args)
    assert (cfg.port, cfg.max_tokens_limit, cfg.queue_size, cfg.host) == (0, 32, 3, "127.0.0.1")
    assert (guard.mode, guard.stride) == ("rk", 5)
    with pytest.raises(UserError, match="--probes"):
        build_server(ServerConfig(), ModelConfig(model="x"), GuardConfig(mode="lp"))
    with pytest.raises(UserError, match="queue-size"):
        build_server(ServerConfig(queue_size=0), ModelConfig(model="x"), GuardConfig(mode="rk"))
