"""Bad input: a typed exception in Python naming the value and what is allowed."""
from __future__ import annotations

import pytest

from hf_reference import make_tiny_hf
from turboctx import (LLM, InvalidRequestError, ModelLoadError, PromptTooLongError, SamplingParams,
                      UnsupportedModelError)


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    make_tiny_hf("llama-gqa3-nobias-tied", folder)
    return LLM(str(folder), device="cpu", max_model_len=64)


@pytest.mark.parametrize("kwargs, words", [
    (dict(max_tokens=0), "max_tokens=0"),
    (dict(temperature=-0.5), "temperature=-0.5"),
    (dict(top_p=0.0), "top_p=0.0"),
    (dict(top_p=1.5), "top_p=1.5"),
    (dict(top_k=-3), "top_k=-3"),
    (dict(logprobs=21), "logprobs=21"),
])
def test_sampling_params_validate(kwargs, words):
    with pytest.raises(InvalidRequestError, match=words.replace(".", r"\.")):
        SamplingParams(**kwargs)


def test_prompt_over_the_limit_names_both_numbers(tiny_llm):
    with pytest.raises(PromptTooLongError, match="70 tokens.*max_model_len is 64"):
        tiny_llm.generate([5] * 70, SamplingParams(max_tokens=1))
    with pytest.raises(PromptTooLongError, match="60 tokens \\+ max_tokens 10 = 70 exceeds max_model_len 64"):
        tiny_llm.generate([5] * 60, SamplingParams(max_tokens=10))


def test_empty_and_malformed_prompts(tiny_llm):
    with pytest.raises(InvalidRequestError, match="empty"):
        tiny_llm.generate([[]], SamplingParams(max_tokens=1))
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        tiny_llm.generate([[5, 100000]], SamplingParams(max_tokens=1))
    with pytest.raises(InvalidRequestError):
        tiny_llm.generate([3.5], SamplingParams(max_tokens=1))


def test_engine_survives_bad_requests(tiny_llm):
    with pytest.raises(InvalidRequestError):
        tiny_llm.generate([[5, 6], [5] * 100], SamplingParams(max_tokens=2))
    out = tiny_llm.generate([5, 6, 7], SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))[0]
    assert len(out.token_ids) == 3 and out.finish_reason == "length"


def test_bad_model_specs(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        LLM(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="config.json"):
        LLM(str(tmp_path))
    with pytest.raises(UnsupportedModelError, match="random:"):
        LLM("random:no-such-model")
    (tmp_path / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}')
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        LLM(str(tmp_path))


def test_bad_engine_options():
    with pytest.raises(InvalidRequestError, match="dtype='float8' is not one of auto, float32, bfloat16, float16"):
        LLM("random:smollm2-135m", dtype="float8")
    with pytest.raises(InvalidRequestError, match="attention='fast'"):
        LLM("random:smollm2-135m", attention="fast", max_model_len=64)
    with pytest.raises(InvalidRequestError, match="unknown engine option"):
        LLM("random:smollm2-135m", max_model_len=64, flash=True)
