"""The static-shape split-KV decode kernel and the fused rotary + cache write, against float64
references. Without CUDA the Triton kernels run in Triton's CPU interpreter (small shapes); the
compiled kernels run in the gpu-marked tests."""
from __future__ import annotations

import os

import pytest
import torch

INTERPRET = not torch.cuda.is_available()
if INTERPRET:
    os.environ["TRITON_INTERPRET"] = "1"      # before triton.jit runs: decoration reads it
triton = pytest.importorskip("triton")

from turboctx.attention.decode_kernel import decode_attention, num_splits_for, rotary_store_kv  # noqa: E402
from turboctx.attention.reference import reference_decode_attention  # noqa: E402
from turboctx.attention.rotary import RotaryEmbedding, apply_rotary  # noqa: E402

TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _case(Hkv, G, D, lens, dtype, device, gap=7, seed=0):
    """A cache holding len(lens) sequences at scattered, non-overlapping slot runs."""
    g = torch.Generator().manual_seed(seed)
    starts, s = [], 3
    for n in lens:
        starts.append(s)
        s += n + gap
    k = torch.randn(Hkv, s + 5, D, generator=g).to(dtype)
    v = torch.randn(Hkv, s + 5, D, generator=g).to(dtype)
    q = torch.randn(len(lens), Hkv * G, D, generator=g).to(dtype)
    to = dict(device=device)
    return (q.to(**to), k.to(**to), v.to(**to), torch.tensor(lens, dtype=torch.int32, **to),
            torch.tensor(starts, dtype=torch.int32, **to))


def _check(Hkv, G, D, lens, dtype, device, num_splits, block_n=None):
    q, k, v, lens_t, starts = _case(Hkv, G, D, lens, dtype, device)
    out, lse = decode_attention(q, k, v, lens_t, starts, D ** -0.5, num_splits, block_n)
    ref_out, ref_lse = reference_decode_attention(q, k, v, lens_t, starts, D ** -0.5)
    assert out.dtype == dtype and out.shape == q.shape and lse.shape == q.shape[:2]
    live = torch.tensor(lens) > 0
    err = (out.cpu().double() - ref_out).abs().max().item()
    assert err < TOL[dtype], err
    assert torch.allclose(lse.cpu().double()[live], ref_lse[live], atol=1e-4, rtol=1e-5)
    assert torch.isneginf(lse.cpu()[~live]).all() and (out.cpu()[~live] == 0).all()


cpu_only = pytest.mark.skipif(not INTERPRET, reason="with CUDA the gpu tests run the compiled kernel")


@cpu_only
@pytest.mark.parametrize("Hkv,G", [(2, 1), (2, 3), (1, 7)])
@pytest.mark.parametrize("D", [64, 128])
def test_interpreted_gqa_and_head_dims(Hkv, G, D):
    # lengths: 1, below one block, not a multiple of the block or of the split, several splits
    _check(Hkv, G, D, [1, 13, 97, 301], torch.float32, "cpu", num_splits=4, block_n=32)


@cpu_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_interpreted_half_dtypes(dtype):
    _check(2, 3, 64, [5, 200, 77], dtype, "cpu", num_splits=3, block_n=16)


@cpu_only
def test_interpreted_padding_rows_and_many_splits():
    # more splits than blocks (empty trailing splits) and a length-0 row (graph padding)
    _check(1, 7, 64, [0, 3, 40, 0], torch.float32, "cpu", num_splits=8, block_n=16)


@cpu_only
def test_interpreted_more_live_splits_than_one_combine_tile():
    _check(1, 3, 64, [700, 2], torch.float32, "cpu", num_splits=40, block_n=16)


@cpu_only
def test_interpreted_one_split_and_odd_head_dim():
    _check(2, 2, 48, [1, 129], torch.float32, "cpu", num_splits=1, block_n=64)


def _check_rotary_store(dtype, device, D=64, Hkv=2, G=3):
    g = torch.Generator().manual_seed(1)
    B = 3
    lens = torch.tensor([5, 0, 17], dtype=torch.int32)      # row 1 is padding
    starts = torch.tensor([0, 30, 40], dtype=torch.int32)
    qkv = torch.randn(B, (Hkv * G + 2 * Hkv) * D, generator=g).to(dtype)
    q, k, v = qkv.split([Hkv * G * D, Hkv * D, Hkv * D], dim=-1)     # strided views, as in the model
    q, k, v = q.view(B, Hkv * G, D), k.view(B, Hkv, D), v.view(B, Hkv, D)
    rot = RotaryEmbedding(D, 1e4)
    cos, sin = rot.cos_sin((lens.long() - 1).clamp(min=0), dtype)
    kc = torch.randn(Hkv, 64, D, generator=g).to(dtype)
    vc = torch.randn(Hkv, 64, D, generator=g).to(dtype)
    kc0, vc0 = kc.clone(), vc.clone()
    to = dict(device=device)
    kc_d, vc_d = kc.to(**to), vc.to(**to)
    q_rot = rotary_store_kv(q.to(**to), k.to(**to), v.to(**to), cos.to(**to), sin.to(**to),
                            kc_d, vc_d, lens.to(**to), starts.to(**to))
    f = lambda x: x.double()  # noqa: E731
    ref_q = apply_rotary(f(q), f(cos), f(sin))
    ref_k = apply_rotary(f(k), f(cos), f(sin))
    tol = TOL[dtype]
    assert (q_rot.cpu().double() - ref_q).abs().max() < tol * 4
    kc_d, vc_d = kc_d.cpu(), vc_d.cpu()
    for b, (n, s0) in enumerate(zip(lens.tolist(), starts.tolist())):
        if n:
            slot = s0 + n - 1
            assert (kc_d[:, slot].double() - ref_k[b]).abs().max() < tol * 4
            assert torch.equal(vc_d[:, slot], v[b])
            kc0[:, slot], vc0[:, slot] = kc_d[:, slot], vc_d[:, slot]
    assert torch.equal(kc_d, kc0) and torch.equal(vc_d, vc0)      # nothing else written


@cpu_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_interpreted_rotary_store(dtype):
    _check_rotary_store(dtype, "cpu")


def test_num_splits_fills_the_gpu_without_tiny_splits():
    cpu = torch.device("cpu")
    assert num_splits_for(1, 4, 100, cpu) == 1
    assert num_splits_for(1, 4, 1 << 20, cpu) >= 1
    assert num_splits_for(64, 8, 1 << 20, cpu) == 1


# ---- compiled kernels on the GPU ---------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("Hkv,G", [(4, 1), (4, 3), (4, 7), (2, 7)])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_decode_attention(Hkv, G, D, dtype):
    _check(Hkv, G, D, [1, 63, 1000, 4099, 0], dtype, "cuda", num_splits=16)


@pytest.mark.gpu
def test_gpu_decode_attention_long_and_batched():
    # 200K keys with the split count the engine would pick, next to short sequences
    lens = [200_003, 17, 65_537]
    S = num_splits_for(len(lens), 4, max(lens), torch.device("cuda"))
    _check(4, 7, 128, lens, torch.bfloat16, "cuda", num_splits=S)


@pytest.mark.gpu
def test_gpu_decode_attention_int64_slot_offsets():
    # slot * stride past 2^31 elements: cache [1, 17M slots, 128] bf16 (4.3 GB each for k and v)
    Hkv, D, n = 1, 128, 4096
    slots = (1 << 31) // D + 2 * n
    k = torch.empty(Hkv, slots, D, dtype=torch.bfloat16, device="cuda")
    v = torch.empty_like(k)
    start = slots - n - 3
    k[:, start:start + n].normal_()
    v[:, start:start + n].normal_()
    q = torch.randn(1, 7, D, dtype=torch.bfloat16, device="cuda")
    lens = torch.tensor([n], dtype=torch.int32, device="cuda")
    starts = torch.tensor([start], dtype=torch.int32, device="cuda")
    out, _ = decode_attention(q, k, v, lens, starts, D ** -0.5, 8)
    ref, _ = reference_decode_attention(q, k, v, lens, starts, D ** -0.5)
    assert (out.cpu().double() - ref).abs().max() < TOL[torch.bfloat16]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_rotary_store(dtype):
    _check_rotary_store(dtype, "cuda")
    _check_rotary_store(dtype, "cuda", D=128, Hkv=4, G=7)
