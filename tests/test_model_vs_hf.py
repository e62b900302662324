"""Our engine against HF transformers on random tiny Qwen2/Llama checkpoints, fp32 CPU."""
from __future__ import annotations

import pytest
import torch

from hf_reference import TINY_CONFIGS, hf_greedy, make_tiny_hf
from turboctx import LLM, SamplingParams

TOL = 1e-4


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def tiny(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    model = make_tiny_hf(request.param, folder)
    return model, str(folder)


def _compare(ours, ref_tokens, ref_tops):
    assert ours.token_ids == ref_tokens
    for step, (mine, theirs) in enumerate(zip(ours.logprobs, ref_tops)):
        for tok, lp in theirs.items():
            assert tok in mine, f"step {step}: token {tok} missing from our top-20"
            assert abs(mine[tok] - lp) < TOL, f"step {step} token {tok}: {mine[tok]} vs {lp}"


@pytest.mark.parametrize("prompt_len", [1, 37, 300])
def test_greedy_and_logprobs_match_hf(tiny, prompt_len):
    hf_model, folder = tiny
    g = torch.Generator().manual_seed(prompt_len)
    prompt = torch.randint(3, 512, (prompt_len,), generator=g).tolist()
    ref_tokens, ref_tops, _ = hf_greedy(hf_model, prompt, 32)
    llm = LLM(folder, device="cpu", dtype="float32", max_model_len=2048)
    out = llm.generate(prompt, SamplingParams(max_tokens=32, temperature=0, logprobs=20, ignore_eos=True))[0]
    _compare(out, ref_tokens, ref_tops)


def test_chunked_prefill_equals_unchunked(tiny):
    _, folder = tiny
    prompt = torch.randint(3, 512, (333,), generator=torch.Generator().manual_seed(1)).tolist()
    sp = SamplingParams(max_tokens=8, temperature=0, logprobs=5, prompt_logprobs=3, ignore_eos=True)
    whole = LLM(folder, device="cpu", dtype="float32", max_num_batched_tokens=2048).generate(prompt, sp)[0]
    chunked = LLM(folder, device="cpu", dtype="float32", max_num_batched_tokens=64).generate(prompt, sp)[0]
    assert whole.token_ids == chunked.token_ids
    for a, b in zip(whole.logprobs + whole.prompt_logprobs[1:], chunked.logprobs + chunked.prompt_logprobs[1:]):
        assert a.keys() == b.keys()
        assert max(abs(a[t] - b[t]) for t in a) < TOL


def test_prompt_logprobs_match_hf(tiny):
    hf_model, folder = tiny
    prompt = torch.randint(3, 512, (200,), generator=torch.Generator().manual_seed(2)).tolist()
    with torch.no_grad():
        ref = torch.log_softmax(hf_model(torch.tensor([prompt])).logits[0].float(), -1)
    llm = LLM(folder, device="cpu", dtype="float32", max_num_batched_tokens=64)
    out = llm.generate(prompt, SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=2))[0]
    plp = out.prompt_logprobs
    assert len(plp) == len(prompt) and plp[0] is None
    for j in range(1, len(prompt)):
        assert abs(plp[j][prompt[j]] - ref[j - 1, prompt[j]].item()) < TOL
        top = ref[j - 1].topk(2).indices.tolist()
        assert all(t in plp[j] for t in top)


def test_batched_prompts_equal_single(tiny):
    _, folder = tiny
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 512, (n,), generator=g).tolist() for n in (5, 130, 61)]
    sp = SamplingParams(max_tokens=12, temperature=0, logprobs=3, ignore_eos=True)
    llm = LLM(folder, device="cpu", dtype="float32", max_num_batched_tokens=100)
    batched = llm.generate(prompts, sp)
    for p, b in zip(prompts, batched):
        single = llm.generate(p, sp)[0]
        assert single.token_ids == b.token_ids
        for x, y in zip(single.logprobs, b.logprobs):
            assert max(abs(x[t] - y[t]) for t in x) < TOL
