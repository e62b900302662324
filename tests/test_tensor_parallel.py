"""Tensor parallelism on the CPU (gloo, 2 processes): tensor_parallel_size=2 gives the logprobs of
tensor_parallel_size=1, for prefill in several chunks and for decode. Lifecycle and failures:
test_tensor_parallel_lifecycle.py."""
from __future__ import annotations

import pytest
import torch

from hf_reference import make_tiny_hf
from turboctx import LLM, SamplingParams
from turboctx.config import ModelArchitecture
from turboctx.distributed.partition import plan_shard
from turboctx.errors import InvalidRequestError

# (family, heads, kv_heads, head_dim, bias, tied): hidden 64, 2 layers
TP_CONFIGS = {
    "qwen2-4q2kv-bias": ("qwen2", 4, 2, 16, True, False),      # GQA, q/k/v biases sharded
    "qwen2-4q1kv-bias-tied": ("qwen2", 4, 1, 16, True, True),  # 1 KV head: replicated on both ranks
    "llama-4q2kv-bias": ("llama", 4, 2, 16, True, False),      # o_proj bias: added once after all-reduce
}
TOL = 1e-5
# The default model (30 layers, fp32 from Q4_1) is split unevenly (9 heads: 4 + 5, KV heads expanded
# per query head). Its own fp32 rounding noise is larger than 1e-5: at tensor_parallel_size=1, prefill
# chunks of 64 vs 2048 tokens already move its logprobs by 2.1e-5 (measured); tp=2 moves them by 3.1e-5.
DEFAULT_TOL = 5e-5
ENGINE = dict(device="cpu", dtype="float32", max_num_batched_tokens=64, max_model_len=1024, kv_cache_tokens=4096)


# The attention backends work per head: each rank runs them on its own heads. Sparse budgets that
# differ per head check that each rank gets the budgets of its own query heads.
BACKENDS = {
    "dca": dict(dca=True, dca_chunk_size=128, dca_local_size=16),     # a 300-token prompt spans 3 DCA chunks
    # chunks ending past 128 tokens run sparse, but for the prompt's last 32 tokens (dense tail)
    "sparse": dict(attention="sparse", sparse_threshold=128, sparse_dense_tail=32),
    "dcasparse": dict(dca=True, dca_chunk_size=128, dca_local_size=16, attention="sparse", sparse_threshold=128,
                      sparse_dense_tail=32),
    "fp8": dict(kv_cache_dtype="fp8", dca=True, dca_chunk_size=128, dca_local_size=16),  # each rank: its KV heads
}
SPARSE_BUDGETS = [[(4, 8), (16, 32), (64, 8), (8, 64)], [(8, 16), (2, 4), (32, 32), (4, 128)]]


def _backend_options(name: str, folder) -> dict:
    opts = dict(BACKENDS[name])
    if "sparse" in name:
        from turboctx.attention.sparse.config import write_sparse_attention_config
        opts["sparse_config"] = str(write_sparse_attention_config(folder / "sparse.json", SPARSE_BUDGETS))
    return opts


@pytest.fixture(scope="module", params=[*TP_CONFIGS, "default", "qwen2-4q2kv-bias+dca",
                                        "qwen2-4q2kv-bias+sparse", "qwen2-4q2kv-bias+dcasparse",
                                        "qwen2-4q2kv-bias+fp8"])
def engines(request, tmp_path_factory):
    """(tp=1 LLM, tp=2 LLM, vocab, tolerance). One tensor-parallel engine alive at a time."""
    name, _, backend = request.param.partition("+")
    folder = tmp_path_factory.mktemp(request.param)
    options = _backend_options(backend, folder) if backend else {}
    if name == "default":
        model, vocab, tol = None, 49152, DEFAULT_TOL
    else:
        model, vocab, tol = str(folder), 512, TOL
        make_tiny_hf(name, model, spec=TP_CONFIGS[name])
    single = LLM(model, **ENGINE, **options)
    tp = LLM(model, tensor_parallel_size=2, **ENGINE, **options)
    yield single, tp, vocab, tol
    tp.shutdown()


@pytest.fixture
def tiny_engines(engines):
    """The engines of the tiny models only (the default model runs the main comparison: it is slow)."""
    if engines[2] != 512:
        pytest.skip("tiny models only (test time)")
    return engines


def _prompts(vocab: int, lengths) -> list[list[int]]:
    g = torch.Generator().manual_seed(sum(lengths))
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def _assert_close(a: list[dict], b: list[dict], tol: float) -> None:
    assert len(a) == len(b)
    for step, (x, y) in enumerate(zip(a, b)):
        assert x.keys() == y.keys(), f"position {step}: top tokens {sorted(x)} vs {sorted(y)}"
        worst = max(abs(x[t] - y[t]) for t in x)
        assert worst < tol, f"position {step}: logprobs differ by {worst:.2e}"


def test_chunked_prefill_and_decode_match_single_rank(engines):
    """A 300-token prompt in 5 chunks of 64 (prompt logprobs of every position), then 16 greedy
    decode steps with top-5 logprobs."""
    single, tp, vocab, tol = engines
    prompt = _prompts(vocab, [300])[0]
    sp = SamplingParams(max_tokens=16, temperature=0, logprobs=5, prompt_logprobs=3, ignore_eos=True)
    a, b = single.generate(prompt, sp)[0], tp.generate(prompt, sp)[0]
    assert a.token_ids == b.token_ids
    _assert_close(a.prompt_logprobs[1:], b.prompt_logprobs[1:], tol)
    _assert_close(a.logprobs, b.logprobs, tol)


def test_batched_requests_match_single_rank(tiny_engines):
    """Several sequences per step (prefill chunks beside decodes, separate block tables)."""
    single, tp, vocab, tol = tiny_engines
    prompts = _prompts(vocab, [5, 130, 61])
    sp = SamplingParams(max_tokens=8, temperature=0, logprobs=4, ignore_eos=True)
    for a, b in zip(single.generate(prompts, sp), tp.generate(prompts, sp)):
        assert a.token_ids == b.token_ids
        _assert_close(a.logprobs, b.logprobs, tol)


def test_prefix_reuse_matches_single_rank(tiny_engines):
    """A prompt sent again reuses its cached prefix blocks (rank 0 allocates, every rank holds them)."""
    single, tp, vocab, tol = tiny_engines
    prompt = _prompts(vocab, [299])[0]        # not a prompt of the other tests: nothing cached yet
    sp = SamplingParams(max_tokens=6, temperature=0, logprobs=4, ignore_eos=True)
    first, again = tp.generate(prompt, sp)[0], tp.generate(prompt, sp)[0]
    assert again.metrics.num_cached_tokens == 256 and first.metrics.num_cached_tokens == 0
    ref = single.generate(prompt, sp)[0]
    for out in (first, again):
        assert out.token_ids == ref.token_ids
        _assert_close(ref.logprobs, out.logprobs, tol)


def test_seeded_sampling_matches_single_rank(tiny_engines):
    """The sampler runs on rank 0 only: seeded sampling gives the same tokens."""
    single, tp, vocab, _ = tiny_engines
    prompt = _prompts(vocab, [40])[0]
    sp = SamplingParams(max_tokens=12, temperature=0.8, top_p=0.9, seed=7, ignore_eos=True)
    assert single.generate(prompt, sp)[0].token_ids == tp.generate(prompt, sp)[0].token_ids


# -- partition and validation (no processes) --------------------------------------------------

def _cfg(heads: int, kv: int, inter: int = 96) -> ModelArchitecture:
    return ModelArchitecture(family="qwen2", vocab_size=512, hidden_size=heads * 16, intermediate_size=inter,
                       num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=kv,
                       head_dim=16, max_position_embeddings=4096)


@pytest.mark.parametrize("heads,kv,tp,want", [
    (4, 2, 2, [(0, 2, (0,)), (2, 4, (1,))]),                       # KV heads split
    (4, 1, 2, [(0, 2, (0,)), (2, 4, (0,))]),                       # fewer KV heads than ranks: replicated
    (40, 8, 2, [(0, 20, (0, 1, 2, 3)), (20, 40, (4, 5, 6, 7))]),   # Qwen2.5-14B
    (28, 4, 4, [(0, 7, (0,)), (7, 14, (1,)), (14, 21, (2,)), (21, 28, (3,))]),  # Qwen2.5-7B on 4
    (9, 3, 2, [(0, 4, (0, 0, 0, 1)), (4, 9, (1, 1, 2, 2, 2))]),    # uneven: one KV head per query head
])
def test_plan_shard_heads(heads, kv, tp, want):
    m = _cfg(heads, kv)
    shards = [plan_shard(m, r, tp) for r in range(tp)]
    assert [(s.q_start, s.q_end, s.kv_heads) for s in shards] == want
    assert sum(s.inter_end - s.inter_start for s in shards) == m.intermediate_size
    for s in shards:       # every query head finds its KV head in equal consecutive groups
        group = s.num_heads // s.num_kv_heads
        assert [s.kv_heads[i // group] for i in range(s.num_heads)] == \
            [h // m.num_queries_per_kv for h in range(s.q_start, s.q_end)]


def test_tensor_parallel_size_validation(tmp_path):
    make_tiny_hf("tiny", tmp_path, spec=TP_CONFIGS["qwen2-4q2kv-bias"])
    with pytest.raises(InvalidRequestError, match="tensor_parallel_size=0 must be an int >= 1"):
        LLM(str(tmp_path), device="cpu", tensor_parallel_size=0)
    with pytest.raises(InvalidRequestError, match="tensor_parallel_size=5 exceeds the model's 4 attention heads"):
        LLM(str(tmp_path), device="cpu", tensor_parallel_size=5)


def test_cuda_needs_a_gpu_per_rank(monkeypatch):
    from turboctx.distributed.executor import rank_devices
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(InvalidRequestError, match="needs 2 GPUs from cuda:0, but 1 are visible"):
        rank_devices(torch.device("cuda"), 2)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert rank_devices(torch.device("cuda", 2), 2) == [torch.device("cuda", 2), torch.device("cuda", 3)]


def test_random_weights_as_checkpoint_tensors_equal_init_random():
    """random:<preset> under TP: each rank slices random_hf_tensors, the weights init_random_ gives."""
    from turboctx.models import build_model
    from turboctx.models.llama import random_hf_tensors
    m = _cfg(4, 2)
    a, b = build_model(m), build_model(m)
    a.init_random_(seed=3)
    b.load_weights(random_hf_tensors(m, 3, torch.float32, "cpu"))
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


def test_every_model_command_takes_tensor_parallel_size():
    from typer.testing import CliRunner

    from turboctx.cli import full_app
    app = full_app()
    for cmd in (["generate"], ["ask"], ["chat"], ["serve"], ["bench", "prefill"], ["bench", "decode"],
                ["eval", "passkey"], ["eval", "ruler"], ["calibrate"]):
        out = CliRunner().invoke(app, [*cmd, "--help"], env={"COLUMNS": "200"}).output
        assert "--tensor-parallel-size" in out and "-tp" in out, cmd
