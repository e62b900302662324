"""Completions as scoring harnesses use them, against the live server: the prompt's logprobs
with echo, lists of prompts, n choices, the tokenizer endpoints, every sampling field honoured."""
from __future__ import annotations

import json

import pytest
import requests

from server_fixtures import MAX_MODEL_LEN, MODEL, post

COMPL, CHAT = "/v1/completions", "/v1/chat/completions"
PROMPT = "The quick brown fox jumps over the lazy dog. The quick brown"
MSGS = [{"role": "user", "content": "Name three colors."}]


def _sp(**kw):
    from turboctx import SamplingParams
    return SamplingParams(**kw)


def _prompt_logprobs(llm, ids: list[int], k: int) -> list[dict | None]:
    return llm.generate([ids], _sp(max_tokens=1, temperature=0, prompt_logprobs=k))[0].prompt_logprobs


def test_echo_logprobs_are_the_prompt_tokens_logprobs(server, reference_llm):
    ids = reference_llm.tokenizer.encode(PROMPT)
    ref = _prompt_logprobs(reference_llm, ids, 2)
    r = post(server, COMPL, {"model": MODEL, "prompt": PROMPT, "echo": True, "logprobs": 2,
                             "max_tokens": 1, "temperature": 0})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(ids) + 1                      # the prompt, then one generated
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    got = lp["token_logprobs"][1:len(ids)]
    assert got == pytest.approx([ref[j][ids[j]] for j in range(1, len(ids))], abs=1e-4)
    for j in range(1, len(ids)):
        best = sorted(ref[j].values(), reverse=True)[:2]
        assert sorted(lp["top_logprobs"][j].values(), reverse=True)[:2] == pytest.approx(best, abs=1e-4)
        assert lp["tokens"][j] in lp["top_logprobs"][j]           # the token itself is always there
    offsets = lp["text_offset"]
    assert offsets[0] == 0 and all(offsets[i + 1] - offsets[i] == len(lp["tokens"][i])
                                   for i in range(len(offsets) - 1))
    assert choice["text"].startswith(PROMPT)

    # max_tokens 0 with echo: the prompt alone, scored; nothing generated is shown or counted
    r = post(server, COMPL, {"model": MODEL, "prompt": ids, "echo": True, "logprobs": 0, "max_tokens": 0})
    body = r.json()
    lp = body["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(ids) and body["usage"]["completion_tokens"] == 0
    assert lp["token_logprobs"][1:] == pytest.approx([ref[j][ids[j]] for j in range(1, len(ids))], abs=1e-4)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["text"] == reference_llm.tokenizer.decode(ids)


def test_a_list_of_prompts_and_n_choices_each(server, reference_llm):
    texts = ["The capital of France is", "One, two, three,"]
    ids = [reference_llm.tokenizer.encode(t) for t in texts]
    greedy = [o.text for o in reference_llm.generate(texts, _sp(max_tokens=6, temperature=0))]
    for prompts in (texts, ids):                                   # strings, or token-id lists
        r = post(server, COMPL, {"model": MODEL, "prompt": prompts, "n": 2, "max_tokens": 6,
                                 "temperature": 0})
        body = r.json()
        assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3], body
        assert [c["text"] for c in body["choices"]] == [greedy[0], greedy[0], greedy[1], greedy[1]]
        assert body["usage"]["prompt_tokens"] == sum(map(len, ids))   # each prompt counted once
    prompts = texts
    # sampled choices differ (each has its own seed), and choice 0 is the n=1 request's
    base = {"model": MODEL, "prompt": prompts[0], "max_tokens": 8, "temperature": 1.0, "seed": 7}
    many = [c["text"] for c in post(server, COMPL, {**base, "n": 4}).json()["choices"]]
    one = post(server, COMPL, base).json()["choices"][0]["text"]
    assert many[0] == one and len(set(many)) > 1


def _stream(server, path, body) -> list[dict]:
    r = post(server, path, {**body, "stream": True}, stream=True)
    assert r.status_code == 200, r.text
    lines = [line for line in r.iter_lines(decode_unicode=True) if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[len("data: "):]) for line in lines[:-1]]


def test_streamed_choices_equal_the_unstreamed_ones(server):
    body = {"model": MODEL, "messages": MSGS, "n": 3, "max_tokens": 8, "temperature": 0.8, "seed": 3}
    full = post(server, CHAT, body).json()
    events = _stream(server, CHAT, {**body, "stream_options": {"include_usage": True}})
    texts, finish = {}, {}
    for e in events[:-1]:
        for c in e["choices"]:
            texts[c["index"]] = texts.get(c["index"], "") + (c["delta"].get("content") or "")
            if c["finish_reason"]:
                finish[c["index"]] = c["finish_reason"]
    assert [texts[i] for i in range(3)] == [c["message"]["content"] for c in full["choices"]]
    assert [finish[i] for i in range(3)] == [c["finish_reason"] for c in full["choices"]]
    assert events[-1]["usage"] == full["usage"] and events[-1]["choices"] == []

    cbody = {"model": MODEL, "prompt": ["a b c", "x y"], "n": 2, "max_tokens": 5, "temperature": 0,
             "echo": True, "logprobs": 1}
    full = post(server, COMPL, cbody).json()
    texts, tokens = {}, {}
    for e in _stream(server, COMPL, cbody):
        for c in e["choices"]:
            texts[c["index"]] = texts.get(c["index"], "") + c["text"]
            if c["logprobs"]:
                tokens[c["index"]] = tokens.get(c["index"], []) + c["logprobs"]["tokens"]
    assert [texts[i] for i in range(4)] == [c["text"] for c in full["choices"]]
    assert [tokens[i] for i in range(4)] == [c["logprobs"]["tokens"] for c in full["choices"]]


def test_tokenize_detokenize_and_tokenizer_info(server, reference_llm):
    tk = reference_llm.tokenizer
    r = post(server, "/tokenize", {"prompt": PROMPT, "add_special_tokens": False, "return_token_strs": True})
    body = r.json()
    assert body["tokens"] == tk.encode(PROMPT) and body["count"] == len(body["tokens"])
    assert body["max_model_len"] == MAX_MODEL_LEN and "".join(body["token_strs"]) == PROMPT
    chat = post(server, "/tokenize", {"model": MODEL, "messages": MSGS}).json()
    assert chat["tokens"] == tk.encode(reference_llm.chat_prompt(MSGS))
    assert post(server, "/detokenize", {"tokens": body["tokens"]}).json() == {"prompt": PROMPT}
    info = requests.get(server.url + "/tokenizer_info", headers=server.headers, timeout=10).json()
    assert info["eos_token"] == tk.eos_token and info["model_max_length"] == MAX_MODEL_LEN
    assert info["chat_template"] == tk.chat_template
    for path, bad, param in [("/tokenize", {"prompt": "a", "messages": MSGS}, "messages"),
                             ("/tokenize", {"prompt": "a", "model": "other"}, "model"),
                             ("/detokenize", {"tokens": [10 ** 9]}, "tokens"),
                             ("/tokenize", {"prompt": "a", "add_special_token": True}, "add_special_token")]:
        r = post(server, path, bad)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


@pytest.mark.parametrize("fields", [
    {"repetition_penalty": 1.3}, {"presence_penalty": 1.5, "frequency_penalty": 0.5},
    {"min_p": 0.2, "temperature": 0.9, "seed": 11}, {"min_tokens": 5, "logit_bias": {"2": 100.0}},
], ids=["repetition", "presence+frequency", "min_p", "min_tokens+logit_bias"])
def test_sampling_fields_are_honoured_as_in_process(server, reference_llm, fields):
    """Each field changes what the engine does exactly as SamplingParams does in-process."""
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 8, "temperature": 0, **fields}
    got = post(server, COMPL, body).json()["choices"][0]["text"]
    sp = {k: v for k, v in body.items() if k not in ("model", "prompt")}
    if "logit_bias" in sp:
        sp["logit_bias"] = {int(t): b for t, b in sp["logit_bias"].items()}
    want = reference_llm.generate(PROMPT, _sp(**sp))[0].text
    plain = reference_llm.generate(PROMPT, _sp(max_tokens=8, temperature=0))[0].text
    assert got == want and want != plain          # the field changed the output, as in-process
