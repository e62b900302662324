"""Decode through captured CUDA graphs equals eager decode.

On the CPU (Triton's interpreter) the graph's body, run uncaptured, is compared with the eager
step; the gpu-marked tests capture and replay for real."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"      # before triton.jit runs (see test_decode_kernel.py)

from hf_reference import make_tiny_hf  # noqa: E402
from turboctx import LLM, SamplingParams  # noqa: E402


def _prompts(lengths, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


DCA = dict(dca=True, dca_chunk_size=64, dca_local_size=16)   # chunk_len 48


@pytest.mark.skipif(torch.cuda.is_available(), reason="the gpu tests capture for real")
@pytest.mark.parametrize("name, extra, lengths", [
    ("qwen2-gqa7-bias-untied", {}, [5, 70, 131]),
    ("llama-gqa3-nobias-tied", {}, [5, 70, 131]),
    # DCA: decode at 50 (intra + succ), 100 (intra + succ + inter), 131 (intra + inter)
    ("qwen2-gqa7-bias-untied", DCA, [50, 100, 131]),
    ("llama-gqa3-nobias-tied", dict(DCA, attention="sparse", sparse_threshold=300), [50, 100, 131]),
    # the FP8 cache: the graph's kernels quantize the new token and read the scales
    ("qwen2-gqa7-bias-untied", dict(kv_cache_dtype="fp8"), [5, 70, 131]),
    ("llama-gqa3-nobias-tied", dict(DCA, kv_cache_dtype="fp8"), [50, 100, 131]),
])
def test_graph_body_equals_eager_step_cpu(tmp_path, name, extra, lengths):
    pytest.importorskip("triton")
    from turboctx.engine.cuda_graph import DecodeGraphRunner
    make_tiny_hf(name, tmp_path)
    llm = LLM(str(tmp_path), device="cpu", dtype="float32", max_model_len=1024, max_num_batched_tokens=64,
              block_size=16, **extra)
    eng = llm.engine
    for ids in _prompts(lengths, 512):            # 3 sequences: the graph of size 4, one padding row
        eng.add_request(eng.make_request(ids, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)))
    while any(r.is_prefill for r in eng.scheduler.running + list(eng.scheduler.waiting)):
        eng.step()
    w = eng.worker
    graphs = DecodeGraphRunner(w.model, w.backend, w.kv_cache, eng.device, eng.config.dtype, 1024)
    for _ in range(3):
        chunks = eng.scheduler.schedule()
        assert graphs.can_run(chunks) and len(chunks) == 3
        with torch.inference_mode():
            body = graphs.run_uncaptured(chunks)      # writes the same k/v the eager step writes
            eager = eng.runner.logits(chunks)
        assert body.shape == eager.shape
        assert (body - eager).abs().max() < 1e-4, (body - eager).abs().max()
        assert eager.abs().max() > 1e-2
        tokens = eager.argmax(-1).tolist()
        for c, t in zip(chunks, tokens):
            c.request.num_computed_tokens += 1
            c.request.append_token(t, None)


def test_no_cuda_graphs_on_cpu(default_gguf_path):
    llm = LLM(default_gguf_path, device="cpu", max_model_len=512)
    assert llm.engine.runner.graphs is None and not llm.engine.attention_setup()["decode_in_cuda_graphs"]
    out = llm.generate([1, 2, 3], SamplingParams(max_tokens=2, temperature=0, ignore_eos=True))[0]
    assert len(out.token_ids) == 2


# ---- capture and replay on the GPU ------------------------------------------------------------

def _generate_both(spec, dtype, lengths, max_tokens, vocab, **kw):
    prompts = _prompts(lengths, vocab)
    params = [SamplingParams(max_tokens=m, temperature=0, logprobs=5, ignore_eos=True) for m in max_tokens]
    outs = {}
    for graphs in (False, True):
        llm = LLM(spec, device="cuda", dtype=dtype, enforce_eager=not graphs, **kw)
        outs[graphs] = llm.generate(prompts, params, use_tqdm=False)
        if graphs:
            g = llm.engine.runner.graphs
            assert g is not None and not g.disabled and g.graphs, "no decode step went through a graph"
            captured = sorted(g.graphs)
        del llm
        torch.cuda.empty_cache()
    return outs[False], outs[True], captured


def _assert_same(eager, graph):
    """fp32: the same tokens, logprobs within 1e-3."""
    for e, g in zip(eager, graph):
        assert g.token_ids == e.token_ids
        worst = max(abs(g.logprobs[i][t] - lp) for i, top in enumerate(e.logprobs) for t, lp in top.items()
                    if t in g.logprobs[i])
        assert worst < 1e-3


def _assert_close_bf16(eager, graph):
    """bf16: rounding differs (fused fp32 rotary, another reduction order), so tokens may part at a
    near-tie; logprobs are compared while the tokens agree (at least the first graph step)."""
    for e, g in zip(eager, graph):
        assert g.token_ids[0] == e.token_ids[0]        # from the (eager) prefill in both
        for i in range(len(e.token_ids)):
            shared = set(e.logprobs[i]) & set(g.logprobs[i])
            assert len(shared) >= 3
            assert max(abs(e.logprobs[i][t] - g.logprobs[i][t]) for t in shared) < 0.1
            if e.token_ids[i] != g.token_ids[i]:
                break


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["qwen2-gqa7-bias-untied", "llama-gqa3-nobias-tied"])
def test_gpu_graph_decode_equals_eager_tiny_hf_fp32(tmp_path, name):
    make_tiny_hf(name, tmp_path)
    # different lengths and different max_tokens: the batch shrinks 5 -> 3 -> 1 (graphs 8, 4, 1)
    eager, graph, captured = _generate_both(
        str(tmp_path), "float32", [7, 300, 1000, 64, 2049], [24, 24, 12, 12, 40], 512,
        max_model_len=4096, max_num_batched_tokens=256, block_size=16)
    assert 1 in captured and len(captured) >= 2, captured
    _assert_same(eager, graph)


@pytest.mark.gpu
def test_gpu_graph_decode_equals_eager_qwen_fp32():
    eager, graph, _ = _generate_both("random:qwen2.5-0.5b", "float32", [100, 5000, 17_000], [16, 16, 16],
                                     150_000, max_model_len=32768, kv_cache_tokens=32768)
    for e, g in zip(eager, graph):
        assert g.token_ids == e.token_ids


@pytest.mark.gpu
def test_gpu_graph_decode_close_to_eager_qwen_bf16():
    """bf16: see _assert_close_bf16."""
    eager, graph, _ = _generate_both("random:qwen2.5-0.5b", "bfloat16", [100, 5000, 40_000], [12, 12, 12],
                                     150_000, max_model_len=65536, kv_cache_tokens=65536)
    _assert_close_bf16(eager, graph)


@pytest.mark.gpu
@pytest.mark.parametrize("dca, attention, kv", [(True, "dense", "auto"), (True, "sparse", "auto"),
                                                (False, "sparse", "auto"), (False, "dense", "fp8"),
                                                (True, "sparse", "fp8")])
def test_gpu_graph_decode_equals_eager_dca_and_sparse_tiny_hf_fp32(tmp_path, dca, attention, kv):
    """DCA decode in graphs: decode rows cross from the local window (intra + succ [+ inter]) to
    far rows (intra + inter) and into a new DCA chunk (chunk_len 192). Sparse backends (prefill
    sparse from 512 tokens) decode as the backend they extend."""
    make_tiny_hf("qwen2-gqa7-bias-untied", tmp_path)
    extra = dict(sparse_threshold=512) if attention == "sparse" else {}
    if dca:
        extra.update(dca=True, dca_chunk_size=256, dca_local_size=64)
    eager, graph, captured = _generate_both(
        str(tmp_path), "float32", [7, 180, 1000, 64, 2049], [24, 24, 12, 12, 40], 512,
        max_model_len=4096, max_num_batched_tokens=256, block_size=16, attention=attention,
        kv_cache_dtype=kv, **extra)
    assert 1 in captured and len(captured) >= 2, captured
    _assert_same(eager, graph)


def _drift(runs, reference) -> torch.Tensor:
    """|logprob - reference logprob| [n, len(runs)] over the top tokens every run and the reference
    list, at the decode steps where all of them still share every earlier token (same context)."""
    rows = []
    for ref, *outs in zip(reference, *runs):
        n = 0
        while n < len(ref.token_ids) and all(o.token_ids[n] == ref.token_ids[n] for o in outs):
            n += 1
        for i in range(min(n + 1, len(ref.token_ids))):
            rows += [[abs(o.logprobs[i][t] - lp) for o in outs] for t, lp in ref.logprobs[i].items()
                     if all(t in o.logprobs[i] for o in outs)]
    assert len(rows) >= 30, len(rows)
    return torch.tensor(rows)


@pytest.mark.gpu
def test_gpu_graph_decode_dca_default_model(default_gguf_path):
    """The default model with DCA from its config (chunk 8192, YaRN past 8192 tokens). fp32: graphs
    give eager's tokens. bf16: graph decode is no further from the fp32 logprobs than eager decode
    is (on random-token prompts this model's bf16 logprobs drift by tenths of a nat either way)."""
    lengths, steps, kw = [100, 9000, 20_000], [12, 12, 12], dict(max_model_len=32768, kv_cache_tokens=65536, dca=True)
    eager32, graph32, _ = _generate_both(default_gguf_path, "float32", lengths, steps, 40_000, **kw)
    _assert_same(eager32, graph32)
    eager16, graph16, _ = _generate_both(default_gguf_path, "bfloat16", lengths, steps, 40_000, **kw)
    d = _drift([eager16, graph16], eager32)                             # [n, (eager, graphs)]
    print(f"bf16 drift from fp32 (mean / max nats): eager {d[:, 0].mean():.4f} / {d[:, 0].max():.4f}, "
          f"graphs {d[:, 1].mean():.4f} / {d[:, 1].max():.4f}, over {len(d)} logprobs")
    assert d[:, 1].mean() <= 1.25 * d[:, 0].mean() + 0.005


@pytest.mark.gpu
@pytest.mark.parametrize("extra", [{}, dict(dca=True, dca_chunk_size=2048, dca_local_size=256),
                                   dict(attention="sparse"), dict(attention="sparse", dca=True),
                                   dict(attention="sparse", dca=True, kv_cache_dtype="fp8")])
def test_gpu_graphs_by_default_for_every_attention_setup(extra):
    """Decode runs in CUDA graphs by default whatever the positions and the prefill pattern;
    enforce_eager turns them off."""
    kw = dict(device="cuda", dtype="bfloat16", max_model_len=8192, kv_cache_tokens=8192, **extra)
    llm = LLM("random:qwen2.5-0.5b", **kw)
    out = llm.generate(_prompts([3000], 150_000)[0], SamplingParams(max_tokens=4, temperature=0,
                                                                     ignore_eos=True))
    assert len(out[0].token_ids) == 4 and llm.engine.captured_graph_sizes() == [1]
    assert LLM("random:qwen2.5-0.5b", enforce_eager=True, **kw).engine.runner.graphs is None
