"""Dense kernels and the dense backend against the float64 reference, over shapes that matter."""
from __future__ import annotations

import pytest
import torch

import turboctx.attention.ops as kernels
from turboctx.attention.backend import AttentionBatch, SeqChunk
from backends import dense_backend
from turboctx.attention.reference import causal_mask, reference_attention
from turboctx.kv_cache import KVCache, SeqSlots
from turboctx.attention.rotary import RotaryEmbedding, apply_rotary

SHAPES = [(1, 1, 64), (3, 1, 64), (7, 1, 128), (7, 2, 64), (3, 4, 128)]   # (G, Hkv, D)


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("G,Hkv,D", SHAPES)
@pytest.mark.parametrize("n,m", [(1, 1), (1, 777), (37, 37), (301, 301), (5, 2049), (130, 4099)])
def test_attend_matches_reference(G, Hkv, D, n, m):
    g = torch.Generator().manual_seed(n * 1000 + m)
    q = torch.randn(n, G * Hkv, D, generator=g)
    k, v = torch.randn(m, Hkv, D, generator=g), torch.randn(m, Hkv, D, generator=g)
    causal = n == m and n > 1
    mask = causal_mask(torch.arange(m - n, m), torch.arange(m)) if causal else torch.ones(n, m, dtype=torch.bool)
    ref, ref_lse = reference_attention(q, k, v, mask, D ** -0.5)
    out, lse = kernels.attend(q, k.transpose(0, 1), v.transpose(0, 1), causal=causal, scale=D ** -0.5)
    assert _rel(out, ref) < 1e-5
    assert (lse.double() - ref_lse).abs().max() < 1e-4


@pytest.mark.parametrize("G,Hkv,D", SHAPES)
def test_split_kv_matches_reference(G, Hkv, D, monkeypatch):
    monkeypatch.setattr(kernels, "SPLIT_KV_SEGMENT", 128)
    n, m = 2, 128 * 5 + 77          # odd tail: a remainder segment
    q, k, v = torch.randn(n, G * Hkv, D), torch.randn(m, Hkv, D), torch.randn(m, Hkv, D)
    qf = q.view(n, Hkv, G, D).permute(1, 2, 0, 3).reshape(Hkv, G * n, D)
    out, lse = kernels._split_kv(qf, k.transpose(0, 1), v.transpose(0, 1), D ** -0.5)
    out = out.view(Hkv, G, n, D).permute(2, 0, 1, 3).reshape(n, G * Hkv, D)
    ref, _ = reference_attention(q, k, v, torch.ones(n, m, dtype=torch.bool), D ** -0.5)
    assert _rel(out, ref) < 1e-5


def test_merge_is_exact():
    q, k, v = torch.randn(9, 6, 32), torch.randn(40, 2, 32), torch.randn(40, 2, 32)
    full, _ = reference_attention(q, k, v, torch.ones(9, 40, dtype=torch.bool), 0.2)
    a = kernels.attend(q, k[:13].transpose(0, 1), v[:13].transpose(0, 1), causal=False, scale=0.2)
    b = kernels.attend(q, k[13:].transpose(0, 1), v[13:].transpose(0, 1), causal=False, scale=0.2)
    merged, _ = kernels.merge_attention(*a, *b)
    assert _rel(merged, full) < 1e-6


def _run_backend(backend, cache, slots, q, k, v, chunk):
    """Feed a sequence through the backend in prefill chunks of `chunk`, then decode the rest."""
    outs, pos = [], 0
    while pos < q.shape[0]:
        n = chunk if pos + chunk <= q.shape[0] - 3 else 1     # last 3 tokens: decode steps
        batch = AttentionBatch([SeqChunk(0, n, pos, slots)], torch.arange(pos, pos + n), cache)
        backend.prepare(batch, q.dtype)
        outs.append(backend.forward(0, q[pos:pos + n], k[pos:pos + n], v[pos:pos + n], batch))
        pos += n
    return torch.cat(outs)


@pytest.mark.parametrize("G,Hkv,D", [(7, 1, 64), (3, 2, 128)])
@pytest.mark.parametrize("scattered", [False, True])
def test_dense_backend_chunked_prefill_and_decode(G, Hkv, D, scattered):
    L, chunk = 203, 64
    rot = RotaryEmbedding(D, 10000.0)
    backend = dense_backend(rot, D)
    cache = KVCache(1, Hkv, D, num_blocks=8, block_size=32, dtype=torch.float32, device="cpu")
    slots = SeqSlots([5, 0, 3, 7, 1, 2, 6] if scattered else [1, 2, 3, 4, 5, 6, 7], 32)
    assert (slots.contiguous_start is None) == scattered
    q, k, v = torch.randn(L, G * Hkv, D), torch.randn(L, Hkv, D), torch.randn(L, Hkv, D)
    out = _run_backend(backend, cache, slots, q, k, v, chunk)
    cos, sin = rot.cos_sin(torch.arange(L), torch.float32)
    ref, _ = reference_attention(apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v,
                                 causal_mask(torch.arange(L), torch.arange(L)), D ** -0.5)
    assert _rel(out, ref) < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("G,Hkv,D", SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("n,m", [(1, 70001), (7, 20011), (513, 513), (333, 4099)])
def test_attend_cuda_matches_reference(G, Hkv, D, dtype, n, m):
    g = torch.Generator().manual_seed(n + m)
    q = torch.randn(n, G * Hkv, D, generator=g)
    k, v = torch.randn(m, Hkv, D, generator=g), torch.randn(m, Hkv, D, generator=g)
    causal = n == m
    mask = causal_mask(torch.arange(n), torch.arange(m)) if causal else torch.ones(n, m, dtype=torch.bool)
    ref, ref_lse = reference_attention(q, k, v, mask, D ** -0.5)
    cq, ck, cv = (t.to("cuda", dtype) for t in (q, k, v))
    out, lse = kernels.attend(cq, ck.transpose(0, 1), cv.transpose(0, 1), causal=causal, scale=D ** -0.5)
    tol = 1e-2 if dtype != torch.float32 else 1e-4
    assert _rel(out.cpu(), ref) < tol
    assert (lse.cpu().double() - ref_lse).abs().max() < 5e-2


def test_compiled_elementwise_ops_match_eager():
    """The torch.compile'd RMSNorm / SiLU*mul used on GPUs compute what the eager ones do."""
    from turboctx.models.layers import rms_norm, silu_mul
    x, w = torch.randn(37, 96), torch.randn(96)
    crms = torch.compile(rms_norm, dynamic=True, fullgraph=True)
    cmul = torch.compile(silu_mul, dynamic=True, fullgraph=True)
    assert _rel(crms(x, w, 1e-6), rms_norm(x, w, 1e-6)) < 1e-6
    g, u = torch.randn(53, 64), torch.randn(53, 64)
    assert _rel(cmul(g, u), silu_mul(g, u)) < 1e-6
