"""DCA through the whole engine: equal to dense while the sequence fits one DCA chunk; options."""
from __future__ import annotations

import pytest
import torch

from hf_reference import make_tiny_hf
from turboctx import LLM, InvalidRequestError, SamplingParams


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("dca")
    make_tiny_hf("qwen2-gqa7-bias-untied", d)
    return str(d)


def _all_logprobs(out):
    return out.logprobs + out.prompt_logprobs[1:]


def test_dca_equals_dense_within_one_chunk(folder):
    prompt = torch.randint(3, 512, (700,), generator=torch.Generator().manual_seed(0)).tolist()
    sp = SamplingParams(max_tokens=16, temperature=0, logprobs=5, prompt_logprobs=2, ignore_eos=True)
    dense = LLM(folder, max_num_batched_tokens=128).generate(prompt, sp)[0]
    dca = LLM(folder, max_num_batched_tokens=128, dca=True, dca_chunk_size=1024,
              dca_local_size=128).generate(prompt, sp)[0]
    assert dense.token_ids == dca.token_ids
    worst = max(abs(a[t] - b[t]) for a, b in zip(_all_logprobs(dense), _all_logprobs(dca)) for t in a)
    assert worst < 1e-5


def test_dca_changes_attention_past_one_chunk(folder):
    prompt = torch.randint(3, 512, (700,), generator=torch.Generator().manual_seed(0)).tolist()
    sp = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0)
    dense = LLM(folder, max_num_batched_tokens=128).generate(prompt, sp)[0]
    dca = LLM(folder, max_num_batched_tokens=128, dca=True, dca_chunk_size=256,
              dca_local_size=32).generate(prompt, sp)[0]
    diff = [abs(dense.prompt_logprobs[j][prompt[j]] - dca.prompt_logprobs[j][prompt[j]])
            for j in range(1, 700)]          # diff[i]: the query at position i
    assert max(diff[:224]) < 1e-5    # the first DCA chunk (chunk_len = 256 - 32): same positions
    assert max(diff[224:256]) < 1e-4  # distances still exact, angles remapped: rounding only
    assert max(diff[256:]) > 0.1      # past the local window: positions really change


def test_dca_options_are_checked(folder):
    with pytest.raises(InvalidRequestError, match="local_size"):
        LLM(folder, dca=True, dca_chunk_size=256, dca_local_size=256)
    with pytest.raises(InvalidRequestError, match="DCA is off"):
        LLM(folder, dca_chunk_size=256)
