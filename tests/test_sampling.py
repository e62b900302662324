"""Sampling: stop strings and ids, seeds, top-k/top-p, several prompts batched."""
from __future__ import annotations

import pytest
import torch

from turboctx import LLM, SamplingParams
from turboctx.engine.sampler import _filter_top_k_top_p


@pytest.fixture(scope="module")
def llm():
    return LLM(device="cpu", max_model_len=2048)


def test_seed_determinism_and_variety(llm):
    sp = lambda seed: SamplingParams(max_tokens=16, temperature=1.0, seed=seed, ignore_eos=True)
    a = llm.generate("Once upon a time", sp(1))[0]
    b = llm.generate("Once upon a time", sp(1))[0]
    c = llm.generate("Once upon a time", sp(2))[0]
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_stop_string_truncates_text(llm):
    sp = SamplingParams(max_tokens=40, temperature=0)
    full = llm.generate("The numbers from one to ten are: one, two,", sp)[0]
    assert ", five" in full.text
    cut = llm.generate("The numbers from one to ten are: one, two,",
                       SamplingParams(max_tokens=40, temperature=0, stop=[", five"]))[0]
    assert cut.finish_reason == "stop" and cut.stop_reason == ", five"
    assert cut.text == full.text[: full.text.index(", five")]


def test_stop_token_ids(llm):
    full = llm.generate("Hello, my name is", SamplingParams(max_tokens=10, temperature=0, ignore_eos=True))[0]
    stop_at = full.token_ids[3]
    out = llm.generate("Hello, my name is", SamplingParams(max_tokens=10, temperature=0,
                                                          stop_token_ids=[stop_at], ignore_eos=True))[0]
    assert out.token_ids == full.token_ids[: full.token_ids.index(stop_at) + 1]
    assert out.finish_reason == "stop" and out.stop_reason == stop_at


def test_top_k_and_top_p_filters():
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    assert torch.isinf(_filter_top_k_top_p(logits, 2, 1.0)).tolist() == [False, False, True, True, True]
    probs = logits.softmax(-1)  # [0.64, 0.24, 0.09, ...]: top_p 0.8 keeps two
    kept = ~torch.isinf(_filter_top_k_top_p(logits, -1, 0.8))
    assert kept.tolist() == [True, True, False, False, False]
    assert probs[:2].sum() >= 0.8


def test_top_k_1_is_greedy(llm):
    g = llm.generate("The sky is", SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))[0]
    k1 = llm.generate("The sky is", SamplingParams(max_tokens=8, temperature=0.9, top_k=1, seed=3,
                                                   ignore_eos=True))[0]
    assert g.token_ids == k1.token_ids


def test_metrics_are_filled(llm):
    out = llm.generate("Tell me a story.", SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))[0]
    m = out.metrics
    assert m.num_prompt_tokens == len(out.prompt_token_ids) and m.num_generated_tokens == 8
    assert m.ttft_s > 0 and m.prefill_tokens_per_s > 0 and m.decode_tokens_per_s > 0
    assert m.peak_memory_bytes > 0
