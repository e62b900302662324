"""Incremental detokenization: the text a request streams is always a prefix of the tokenizer's
decode of its tokens and ends equal to it; stop strings are found across token boundaries; and a
step's cost does not grow with the output's length."""
from __future__ import annotations

import random
import statistics
import time

import pytest

from turboctx import SamplingParams
from turboctx.engine.detokenizer import IncrementalDetokenizer


@pytest.fixture(scope="module")
def tok(default_gguf_path):
    from turboctx.tokenizer import Tokenizer
    return Tokenizer.from_gguf(default_gguf_path)


def _ids(tok, rng, n):
    if rng.random() < 0.5:   # real text with multi-byte characters and special tokens
        text = "héllo wörld 日本語 🤖🎉 <|im_start|>user\nhi<|im_end|> tail " * 4
        ids = tok.encode(text)
        start = rng.randrange(len(ids))
        return ids[start:start + n]
    return [rng.randrange(tok.vocab_size) for _ in range(n)]


@pytest.mark.parametrize("skip", [True, False])
def test_streamed_text_grows_to_the_full_decode(tok, skip):
    rng = random.Random(int(skip))
    for _ in range(200):
        ids = _ids(tok, rng, rng.randint(1, 50))
        d = IncrementalDetokenizer(tok, SamplingParams(max_tokens=64, skip_special_tokens=skip))
        for i, t in enumerate(ids):
            assert d.add(t) is None
            assert tok.decode(ids[:i + 1], skip_special_tokens=skip).startswith(d.text)
        d.finish(ids)
        assert d.text == tok.decode(ids, skip_special_tokens=skip)


def test_stop_strings_across_tokens(tok):
    ids = tok.encode("The answer is forty-two. Then more text follows here.")
    for include, want in ((False, "The answer is forty-two"), (True, "The answer is forty-two.")):
        d = IncrementalDetokenizer(tok, SamplingParams(max_tokens=64, stop=["zz", ". Then"],
                                                       include_stop_str_in_output=include))
        for i, t in enumerate(ids):
            if d.add(t) is not None:
                break
        assert i < len(ids) - 1 and d.text == (want + " Then" if include else want)


def _early_and_late_step_times(step, ids: list[int]) -> tuple[float, float]:
    """Median seconds of step(token) over the first 2,000 tokens and over the last 2,000."""
    def median_time(chunk):
        times = []
        for t in chunk:
            t0 = time.perf_counter()
            step(t)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    early = median_time(ids[:2000])
    for t in ids[2000:-2000]:
        step(t)
    return early, median_time(ids[-2000:])


def _random_ids(seed: int, n: int = 30000) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(100, 40000) for _ in range(n)]


def test_a_step_costs_the_same_late_in_a_long_output(tok, monkeypatch):
    """30,000 tokens: the late steps cost what the early ones do (a full re-decode would cost
    ~100x more by then), and the full decode runs at most once, at the end."""
    calls = []
    real = tok.decode
    monkeypatch.setattr(tok, "decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    d = IncrementalDetokenizer(tok, SamplingParams(max_tokens=40000, stop=["\x00never\x00"]))
    early, late = _early_and_late_step_times(d.add, _random_ids(0))
    assert late < 4 * early + 5e-6, (early, late)
    assert calls == []


def test_a_request_step_and_its_output_cost_the_same_late(tok):
    """What the engine does per generated token: append it (detokenize, stop checks) and make
    the request's output."""
    from turboctx.engine.request import Request
    ids = _random_ids(1)
    req = Request("r", None, [1, 2, 3], SamplingParams(max_tokens=40000, logprobs=1, stop=["\x00!"]),
                  [], tok)

    def step(t):
        req.append_token(t, {t: -1.0})
        req.to_output()

    early, late = _early_and_late_step_times(step, ids)
    assert late < 4 * early + 5e-6, (early, late)
    out = req.to_output()
    assert out.token_ids == ids and out.text == tok.decode(ids) and len(out.logprobs) == len(ids)
