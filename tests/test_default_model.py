"""The default model (SmolLM2-135M-Instruct, Q4_1 GGUF) against HF transformers loading the same file."""
from __future__ import annotations


import pytest

from hf_reference import hf_greedy
from turboctx import LLM, SamplingParams

TOL = 1e-4


@pytest.fixture(scope="module")
def hf_model(hf_default_model):
    return hf_default_model


@pytest.fixture(scope="module")
def llm():
    return LLM(device="cpu", dtype="float32", max_model_len=8192)


def _bible_ids(llm, n):
    from turboctx.eval.haystack import bible_text
    ids = llm.tokenizer.encode(bible_text()[: n * 8])
    assert len(ids) >= n
    return ids[:n]


@pytest.mark.parametrize("n", [1, 9, 250, 2000])
def test_default_model_matches_hf(llm, hf_model, n):
    prompt = _bible_ids(llm, n)
    ref_tokens, ref_tops, _ = hf_greedy(hf_model, prompt, 32)
    out = llm.generate(prompt, SamplingParams(max_tokens=32, temperature=0, logprobs=20, ignore_eos=True))[0]
    assert out.token_ids == ref_tokens
    for step, (mine, theirs) in enumerate(zip(out.logprobs, ref_tops)):
        assert set(theirs) <= set(mine), f"step {step}: top-20 differs"
        worst = max(abs(mine[t] - lp) for t, lp in theirs.items())
        assert worst < TOL, f"step {step}: logprob differs by {worst}"


def test_chat_template_and_answer(llm):
    out = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                   SamplingParams(max_tokens=20, temperature=0))[0]
    assert "Paris" in out.text
    assert out.finish_reason == "stop"


def test_passkey_at_4k_on_cpu(llm):
    from turboctx.eval import passkey
    samples = passkey.generate([4096], [0.1, 0.5, 0.9], trials=1, seed=0,
                               count=lambda s: len(llm.tokenizer.encode(s)), max_tokens=8)
    assert all(3900 < s.prompt_tokens <= 4096 for s in samples)
    outs = llm.generate([s.prompt for s in samples], SamplingParams(max_tokens=8, temperature=0))
    hits = sum(s.expected[0] in o.text for s, o in zip(samples, outs))
    assert hits >= 2, f"passkey at 4K: {hits}/3 ({[o.text for o in outs]})"
