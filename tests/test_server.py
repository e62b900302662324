"""The OpenAI-compatible server, live on 127.0.0.1, driven by the real `openai` client."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

from server_fixtures import API_KEY, MAX_BODY_BYTES, MAX_MODEL_LEN, MODEL, post

MSGS = [{"role": "user", "content": "Name three colors."}]
PROMPT = "The capital of France is"


def assert_alive(server):
    r = requests.get(server.url + "/v1/models", headers=server.headers, timeout=10)
    assert r.status_code == 200 and r.json()["data"][0]["id"] == MODEL


def test_health_and_models(server, client):
    assert requests.get(server.url + "/health", timeout=10).json() == {"status": "ok"}
    models = client.models.list()
    assert [m.id for m in models.data][0] == MODEL


def test_chat_and_stream_agree_with_usage(client):
    r = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=8, temperature=0)
    c = r.choices[0]
    assert r.object == "chat.completion" and c.message.role == "assistant"
    assert c.message.content and c.finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > 5 and 1 <= u.completion_tokens <= 8
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.prompt_tokens_details.cached_tokens == 0

    chunks = list(client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == c.message.content
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == [c.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == u.completion_tokens
    assert chunks[-1].usage.prompt_tokens == u.prompt_tokens
    assert all(ch.usage is None for ch in chunks[:-1])


def test_completions_and_stream_agree(client):
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text
    assert r.usage.completion_tokens == 6 and r.choices[0].finish_reason == "length"
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == r.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_raw_sse_framing_ends_with_done(server):
    r = post(server, "/v1/completions", {"model": MODEL, "prompt": PROMPT, "max_tokens": 3, "stream": True},
             stream=True)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    raw = r.content.decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events[:-1])


def test_stop_string(client):
    base = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0)
    text = base.choices[0].text
    assert len(text) > 6
    stop = text[3:5]
    cut = text[:text.index(stop)]
    r = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stop=[stop])
    assert r.choices[0].text == cut and r.choices[0].finish_reason == "stop"
    chunks = list(client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0,
                                            stop=stop, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == cut       # nothing past the stop leaked


def test_seed_determinism(client):
    def run(seed):
        return client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=10, temperature=1.0,
                                              seed=seed).choices[0].message.content
    a, b = run(1234), run(1234)
    assert a == b
    assert any(run(s) != a for s in (1, 2, 3))


def test_extreme_seed_and_tiny_top_p_are_served(client):
    """Found by fuzzing: both used to fail the engine step (and so every request in flight) with a 500."""
    greedy = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0).choices[0].text
    tiny = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, top_p=1e-300).choices[0].text
    assert tiny == greedy                       # a top_p below every probability keeps the top token
    for seed in (2 ** 63 - 1, -(2 ** 63)):
        assert client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, seed=seed).choices[0].text


def test_logprobs_equal_in_process(client, reference_llm):
    llm = reference_llm
    from turboctx import SamplingParams
    sp = SamplingParams(max_tokens=5, temperature=0, logprobs=4)
    ref = llm.chat(MSGS, sp)[0]
    r = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=5, temperature=0,
                                       logprobs=True, top_logprobs=4)
    content = r.choices[0].logprobs.content
    assert r.choices[0].message.content == ref.text and len(content) == len(ref.token_ids)
    for item, tok, d in zip(content, ref.token_ids, ref.logprobs):
        assert item.logprob == pytest.approx(d[tok], abs=1e-4)
        assert bytes(item.bytes).decode(errors="replace") == item.token
        want = sorted(d.values(), reverse=True)[:4]
        assert [t.logprob for t in item.top_logprobs] == pytest.approx(want, abs=1e-4)

    ref = llm.generate(PROMPT, SamplingParams(max_tokens=4, temperature=0, logprobs=3))[0]
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == ref.text
    assert lp.token_logprobs == pytest.approx([d[t] for t, d in zip(ref.token_ids, ref.logprobs)], abs=1e-4)
    for top, d in zip(lp.top_logprobs, ref.logprobs):
        assert sorted(top.values(), reverse=True)[:3] == pytest.approx(sorted(d.values(), reverse=True)[:3], abs=1e-4)
    assert "".join(lp.tokens) == r.choices[0].text and lp.text_offset[0] == 0


CHAT, COMPL = "/v1/chat/completions", "/v1/completions"
OK_CHAT = {"model": MODEL, "messages": MSGS, "max_tokens": 2}
OK_COMPL = {"model": MODEL, "prompt": PROMPT, "max_tokens": 2}
BAD = [
    ("invalid json", CHAT, b'{"model": "x", "messages": [', None, "not valid JSON"),
    ("body not an object", CHAT, [1, 2], None, None),
    ("missing messages", CHAT, {"model": MODEL}, "messages", "messages"),
    ("missing model", CHAT, {"messages": MSGS}, "model", "model"),
    ("messages wrong type", CHAT, {**OK_CHAT, "messages": "hello"}, "messages", None),
    ("message without role", CHAT, {**OK_CHAT, "messages": [{"content": "hi"}]}, "messages.0.role", None),
    ("max_tokens as string", CHAT, {**OK_CHAT, "max_tokens": "10"}, "max_tokens", None),
    ("temperature as string", CHAT, {**OK_CHAT, "temperature": "hot"}, "temperature", None),
    ("unknown model", CHAT, {**OK_CHAT, "model": "gpt-17"}, "model", "gpt-17"),
    ("empty messages", CHAT, {**OK_CHAT, "messages": []}, "messages", "at least 1"),
    ("prompt over max_model_len", COMPL, {**OK_COMPL, "prompt": [100] * 2100}, "prompt", "2100"),
    ("text prompt over max_model_len", CHAT,
     {**OK_CHAT, "messages": [{"role": "user", "content": "hello " * 2100}]}, "messages", str(MAX_MODEL_LEN)),
    ("max_tokens 0", CHAT, {**OK_CHAT, "max_tokens": 0}, "max_tokens", None),
    ("max_tokens negative", COMPL, {**OK_COMPL, "max_tokens": -5}, "max_tokens", None),
    ("max_tokens beyond what fits", COMPL, {**OK_COMPL, "max_tokens": 5000}, "max_tokens", str(MAX_MODEL_LEN)),
    ("temperature too high", CHAT, {**OK_CHAT, "temperature": 2.5}, "temperature", None),
    ("temperature negative", COMPL, {**OK_COMPL, "temperature": -0.1}, "temperature", None),
    ("top_p above 1", CHAT, {**OK_CHAT, "top_p": 1.5}, "top_p", None),
    ("top_p zero", COMPL, {**OK_COMPL, "top_p": 0.0}, "top_p", "top_p"),
    ("n too large", CHAT, {**OK_CHAT, "n": 1000}, "n", None),
    ("seed beyond int64", COMPL, {**OK_COMPL, "seed": 2 ** 64}, "seed", None),
    ("top_logprobs too many", CHAT, {**OK_CHAT, "logprobs": True, "top_logprobs": 50}, "top_logprobs", None),
    ("token id outside vocab", COMPL, {**OK_COMPL, "prompt": [10 ** 9]}, None, "vocabulary"),
    ("empty prompt", COMPL, {**OK_COMPL, "prompt": ""}, "prompt", "empty"),
    ("an empty prompt in a list", COMPL, {**OK_COMPL, "prompt": ["a", ""]}, "prompt.1", "empty"),
    ("unknown field", CHAT, {**OK_CHAT, "temprature": 0.5}, "temprature", "temprature"),
    ("max_tokens 0 without echo", COMPL, {**OK_COMPL, "max_tokens": 0}, "max_tokens", "echo"),
    ("store true", CHAT, {**OK_CHAT, "store": True}, "store", "store"),
    ("logit_bias key not a token", COMPL, {**OK_COMPL, "logit_bias": {"abc": 1.0}}, "logit_bias", "abc"),
    ("repetition_penalty zero", CHAT, {**OK_CHAT, "repetition_penalty": 0.0}, "repetition_penalty", None),
    ("image content", CHAT, {**OK_CHAT, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]}, "messages.0.content", None),
]


@pytest.mark.parametrize("name,path,body,param,text", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_400_and_server_keeps_serving(server, name, path, body, param, text):
    r = post(server, path, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["message"]
    if param is not None:
        assert err["param"] is not None and err["param"].startswith(param.split(".")[0]), err
    if text is not None:
        assert text in err["message"], err
    if name.startswith("prompt over") or name.startswith("text prompt over"):
        assert str(MAX_MODEL_LEN) in err["message"]
    assert_alive(server)


def test_bad_input_through_openai_client(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=3000)
    assert "2048" in e.value.message
    assert client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=1).choices[0].message.content is not None


def test_api_key_enforced(server):
    for path in ("/v1/models", "/metrics", "/openapi.json"):
        assert requests.get(server.url + path, timeout=10).status_code == 401
        r = requests.get(server.url + path, headers={"Authorization": "Bearer wrong"}, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = requests.post(server.url + CHAT, json=OK_CHAT, timeout=10)
    assert r.status_code == 401
    assert requests.get(server.url + "/health", timeout=10).status_code == 200
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_body_size_limit(server):
    big = {**OK_COMPL, "prompt": "x" * (MAX_BODY_BYTES + 10)}
    r = post(server, COMPL, big)
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    chunked = (json.dumps(big).encode()[i:i + 65536] for i in range(0, MAX_BODY_BYTES + 200, 65536))
    r = requests.post(server.url + COMPL, data=chunked, timeout=30,   # no Content-Length
                      headers={**server.headers, "Content-Type": "application/json"})
    assert r.status_code == 413
    assert_alive(server)


def _long(**kw):
    return {"model": MODEL, "max_tokens": 1500, "temperature": 0, "ignore_eos": True, **kw}


def test_stream_disconnect_aborts_and_frees(server, client):
    before = server.metrics().get('turboctx_requests_finished_total{finish_reason="abort"}', 0)
    kw = _long()
    extra = {"ignore_eos": kw.pop("ignore_eos")}
    stream = client.chat.completions.create(messages=MSGS, stream=True, extra_body=extra, **kw)
    got = 0
    for ch in stream:        # 1500 tokens would take over a minute: we leave after a few
        got += 1
        if got == 4:
            break
    assert server.metrics()["turboctx_kv_cache_blocks_used"] > 0
    stream.close()
    m = server.wait_idle(10)
    assert m["turboctx_num_requests_running"] == 0 and m["turboctx_kv_cache_blocks_used"] == 0
    assert m['turboctx_requests_finished_total{finish_reason="abort"}'] == before + 1


def test_nonstream_disconnect_aborts_and_frees(server):
    before = server.metrics().get('turboctx_requests_finished_total{finish_reason="abort"}', 0)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(server.url + COMPL, json=_long(prompt=PROMPT), headers=server.headers, timeout=1.5)
    m = server.wait_idle(10)
    assert m["turboctx_num_requests_running"] == 0 and m["turboctx_kv_cache_blocks_used"] == 0
    assert m['turboctx_requests_finished_total{finish_reason="abort"}'] == before + 1


def test_concurrent_requests_all_answered(server, client):
    def one(i):
        r = client.completions.create(model=MODEL, prompt=f"{i} + {i} =", max_tokens=4, temperature=0)
        return r.id, r.usage.completion_tokens
    with ThreadPoolExecutor(8) as ex:
        res = list(ex.map(one, range(8)))
    assert len({rid for rid, _ in res}) == 8 and all(n == 4 for _, n in res)
    m = server.wait_idle(10)
    assert m["turboctx_kv_cache_blocks_used"] == 0


def test_metrics_exposed(server):
    m = server.metrics()
    for name in ("turboctx_num_requests_waiting", "turboctx_num_requests_running", "turboctx_kv_cache_usage_ratio",
                 "turboctx_time_to_first_token_seconds_count", "turboctx_inter_token_latency_seconds_count",
                 "turboctx_prompt_tokens_total", "turboctx_generation_tokens_total"):
        assert name in m, name
    assert m["turboctx_time_to_first_token_seconds_count"] > 0 and m["turboctx_inter_token_latency_seconds_count"] > 0
    assert m["turboctx_prompt_tokens_total"] > 0 and m["turboctx_generation_tokens_total"] > 0
    assert m["turboctx_kv_cache_blocks_total"] > 0


def test_serve_is_mounted_in_cli():
    from turboctx.cli import full_app
    app = full_app()
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert "serve" in names


def test_bench_serve_against_live_server(server):
    import asyncio

    from turboctx.bench.serve import run_bench
    res = asyncio.run(run_bench(server.url, api_key=API_KEY, concurrency=4, num_requests=8, prompt_len=16,
                                max_tokens=4, timeout_s=120))
    assert res["model"] == MODEL and res["answered"] == 8
    assert res["errors"] == res["lost"] == res["duplicate_ids"] == 0
    assert res["latency_s"]["p99"] >= res["latency_s"]["p50"] > 0 and res["output_tokens_per_s"] > 0
    assert res["mean_prompt_tokens"] >= 10


def test_bench_serve_long_prompt_phases_against_live_server(server, tmp_path):
    """The long-prompt bench's three phases end to end (small sizes): every request answered."""
    import asyncio

    from turboctx.bench.serve import run_bench
    from turboctx.bench.serve_long import plot_gaps
    res = asyncio.run(run_bench(server.url, api_key=API_KEY, concurrency=2, prompt_len=8, max_tokens=6,
                                long_prompt_len=400, baseline_s=1.5, timeout_s=120, token_ids=True))
    assert res["errors"] == res["lost"] == res["duplicate_ids"] == 0 and res["answered"] >= 2
    assert res["long_prompt_tokens"] == 400 and res["long_ttft_alone_s"] > 0
    assert res["short_itl_without_s"]["p50"] > 0            # one token time per generated token
    assert res["long_ttft_ratio"] > 0 and res["n_gaps_without"] > 0
    plot_gaps(res, tmp_path / "itl.png")
    assert (tmp_path / "itl.png").stat().st_size > 1000
