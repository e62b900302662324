"""The engine on CUDA: against HF on CPU (fp32), and chunked vs unchunked prefill at length (bf16)."""
from __future__ import annotations

import pytest
import torch

from hf_reference import hf_greedy, make_tiny_hf
from turboctx import LLM, SamplingParams

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", ["qwen2-gqa7-bias-untied", "llama-gqa3-nobias-tied"])
def test_cuda_fp32_matches_hf(tmp_path, name):
    hf = make_tiny_hf(name, tmp_path)
    prompt = torch.randint(3, 512, (300,), generator=torch.Generator().manual_seed(0)).tolist()
    tokens, tops, _ = hf_greedy(hf, prompt, 32)
    llm = LLM(str(tmp_path), device="cuda", dtype="float32", max_model_len=4096, max_num_batched_tokens=128)
    out = llm.generate(prompt, SamplingParams(max_tokens=32, temperature=0, logprobs=20, ignore_eos=True))[0]
    assert out.token_ids == tokens
    worst = max(abs(out.logprobs[i][t] - lp) for i, top in enumerate(tops) for t, lp in top.items())
    assert worst < 1e-3


def test_cuda_bf16_long_chunked_equals_unchunked():
    ids = torch.randint(0, 150000, (40_000,), generator=torch.Generator().manual_seed(1)).tolist()
    sp = SamplingParams(max_tokens=4, temperature=0, logprobs=5, ignore_eos=True)
    kw = dict(device="cuda", dtype="bfloat16", max_model_len=65536, kv_cache_tokens=65536)
    one = LLM("random:qwen2.5-0.5b", max_num_batched_tokens=65536, **kw).generate(ids, sp)[0]
    torch.cuda.empty_cache()
    many = LLM("random:qwen2.5-0.5b", max_num_batched_tokens=8192, **kw).generate(ids, sp)[0]
    first_one, first_many = one.logprobs[0], many.logprobs[0]
    shared = set(first_one) & set(first_many)
    assert len(shared) >= 3
    assert max(abs(first_one[t] - first_many[t]) for t in shared) < 0.1


def test_cuda_structured_output_and_penalties_in_graph_decode(default_gguf_path):
    """The sampler's grammar mask and penalties on CUDA logits, with decode in CUDA graphs: the
    JSON is valid and the tokens equal the CPU engine's (fp32 both)."""
    import json

    from turboctx.structured import StructuredOutputsParams
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    msgs = [{"role": "user", "content": "A person as JSON."}]
    sp = SamplingParams(max_tokens=40, temperature=0, repetition_penalty=1.1,
                        structured_outputs=StructuredOutputsParams(json=schema))
    gpu = LLM(None, device="cuda", dtype="float32", max_model_len=1024)
    out = gpu.chat(msgs, sp)[0]
    assert gpu.engine.captured_graph_sizes() and out.finish_reason == "stop"
    assert set(json.loads(out.text)) == {"name", "age"}
    cpu = LLM(None, device="cpu", max_model_len=1024).chat(msgs, sp)[0]
    assert out.token_ids == cpu.token_ids
