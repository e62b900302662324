"""The FP8 KV-cache format (kv_cache/fp8.py) and the Triton decode kernels that read and write it
(attention/decode_kernel.py), against the torch reference quantizer and a float64 attention
reference over the dequantized cache. Without CUDA the kernels run in Triton's interpreter."""
from __future__ import annotations

import os

import pytest
import torch

INTERPRET = not torch.cuda.is_available()
if INTERPRET:
    os.environ["TRITON_INTERPRET"] = "1"      # before triton.jit runs: decoration reads it
triton = pytest.importorskip("triton")

from turboctx.attention.decode_kernel import decode_attention, rotary_store_kv  # noqa: E402
from turboctx.attention.reference import reference_decode_attention  # noqa: E402
from turboctx.attention.rotary import apply_rotary  # noqa: E402
from turboctx.kv_cache.fp8 import (FP8_DTYPE, FP8_MAX, SCALE_DTYPE, FP8Layer, dequantize,  # noqa: E402
                                   fake_quantize, quantize)

DEVICE = "cpu" if INTERPRET else "cuda"


# -- the format ---------------------------------------------------------------------------------

@pytest.mark.parametrize("magnitude", [1e-4, 0.05, 1.0, 300.0])
def test_quantize_keeps_each_vector_within_e4m3_precision(magnitude):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, 128, generator=g) * magnitude
    x[3, 1, 7] = 40 * magnitude                    # an outlier: only its own vector's range grows
    data, scale = quantize(x)
    assert data.dtype == FP8_DTYPE and scale.dtype == SCALE_DTYPE and scale.shape == (64, 4)
    assert data.float().abs().amax(-1).le(FP8_MAX).all()
    back = dequantize(data, scale, torch.float32)
    amax = x.abs().amax(-1, keepdim=True)
    # e4m3: 3 mantissa bits -> relative error <= 2^-4 on normals; subnormals below 2^-6 x scale
    # have an absolute step of 2^-9 x scale
    bound = torch.maximum(x.abs() * 2 ** -4, amax / FP8_MAX * 2 ** -10) * 1.01 + 1e-30
    assert ((back - x).abs() <= bound).all()
    assert torch.equal(fake_quantize(x), back)
    others = torch.ones(64, 4, dtype=torch.bool)
    others[3, 1] = False
    assert ((back - x).abs()[others] <= x.abs()[others] * 2 ** -4 + amax[others] * 2 ** -12).all()


def test_zero_vectors_and_static_scales():
    x = torch.zeros(2, 3, 8)
    data, scale = quantize(x)
    assert torch.equal(dequantize(data, scale, torch.float32), x) and (scale == 1).all()
    x = torch.tensor([[[1.0, -2.0, 1000.0, 0.0]]])                # [1, 1, 4]
    data, scale = quantize(x, torch.tensor([0.5]))
    assert scale.item() == 0.5
    # 1000 / 0.5 = 2000 saturates at 448: the checkpoint's scale bounds the range, as in vLLM
    assert dequantize(data, scale, torch.float32).tolist() == [[[1.0, -2.0, 224.0, 0.0]]]


# -- the Triton kernels -------------------------------------------------------------------------

def _fp8_cache(Hkv, slots, D, dtype, seed, static=None):
    g = torch.Generator().manual_seed(seed)
    layers = []
    for which in range(2):
        x = torch.randn(slots, Hkv, D, generator=g) * (3.0 if which == 0 else 0.5)
        x[::11] *= 20                                              # some tokens far larger
        data, scale = quantize(x.to(dtype), None if static is None else static[which])
        layers.append(FP8Layer(data.transpose(0, 1).contiguous().to(DEVICE),
                               scale.T.contiguous().to(DEVICE), dtype,
                               None if static is None else static[which].to(DEVICE)))
    return layers


@pytest.mark.parametrize("Hkv, G, D", [(2, 1, 64), (2, 3, 64), (1, 7, 128), (4, 7, 128)])
@pytest.mark.parametrize("static", [False, True])
def test_rotary_store_writes_what_the_reference_quantizer_gives(Hkv, G, D, static):
    dtype = torch.float32
    st = (torch.rand(Hkv) * 0.02 + 0.005, torch.rand(Hkv) * 0.005 + 0.001) if static else None
    kc, vc = _fp8_cache(Hkv, 300, D, dtype, seed=1, static=st)
    g = torch.Generator().manual_seed(2)
    B = 3
    q, k, v = (torch.randn(B, n, D, generator=g).to(DEVICE) * s
               for n, s in ((Hkv * G, 1.0), (Hkv, 4.0), (Hkv, 0.3)))
    ang = torch.rand(B, D // 2, generator=g).to(DEVICE) * 6
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    lens = torch.tensor([37, 0, 250], device=DEVICE)               # row 1: padding, writes nothing
    starts = torch.tensor([5, 60, 40], device=DEVICE)
    before = (kc.data.clone(), vc.data.clone(), kc.scale.clone(), vc.scale.clone())
    q_rot = rotary_store_kv(q, k, v, cos, sin, kc, vc, lens, starts)
    assert torch.allclose(q_rot, apply_rotary(q, cos, sin), atol=1e-5)
    k_rot = apply_rotary(k, cos, sin)
    written = []
    for b in (0, 2):
        slot = int(starts[b] + lens[b] - 1)
        written.append(slot)
        for cache, x, stat in ((kc, k_rot[b], None if st is None else st[0]),
                               (vc, v[b], None if st is None else st[1])):
            data, scale = quantize(x, None if stat is None else stat.to(DEVICE))
            assert torch.equal(cache.scale[:, slot], scale)
            # the rotation is fp32 in both, but fused differently: allow one e4m3 step
            got, want = cache.data[:, slot].float(), data.float()
            assert ((got - want).abs() <= want.abs() * 2 ** -3 + 2 ** -9).all()
            assert (got == want).float().mean() > 0.97
    keep = torch.ones(300, dtype=torch.bool)
    keep[written] = False
    for now, old in zip((kc.data, vc.data, kc.scale, vc.scale), before):
        assert torch.equal(now[:, keep].float(), old[:, keep].float())   # nothing else touched


@pytest.mark.parametrize("Hkv, G, D", [(2, 1, 64), (2, 3, 64), (1, 7, 128), (4, 7, 128)])
@pytest.mark.parametrize("dtype", [torch.float32] + ([] if INTERPRET else [torch.bfloat16]))
def test_decode_attention_reads_the_fp8_cache(Hkv, G, D, dtype):
    kc, vc = _fp8_cache(Hkv, 1500, D, dtype, seed=3)
    lens = torch.tensor([1, 129, 0, 1000], dtype=torch.int32, device=DEVICE)
    starts = torch.tensor([0, 7, 0, 401], dtype=torch.int32, device=DEVICE)
    q = torch.randn(4, Hkv * G, D, generator=torch.Generator().manual_seed(4)).to(DEVICE, dtype)
    for splits in (1, 5):
        out, lse = decode_attention(q, kc, vc, lens, starts, D ** -0.5, splits)
        # e4m3 x bf16 scale is exact in fp32: the reference reads the cache's values unrounded
        ref, ref_lse = reference_decode_attention(q, dequantize(kc.data, kc.scale, torch.float32),
                                                  dequantize(vc.data, vc.scale, torch.float32), lens,
                                                  starts, D ** -0.5)
        tol = 2e-5 if dtype == torch.float32 else 2e-2
        live = lens.cpu() > 0
        assert (out.cpu().double()[live] - ref[live]).abs().max() < tol * ref.abs().max()
        assert (lse.cpu().double()[live] - ref_lse[live]).abs().max() < tol * 10
        assert torch.isneginf(lse[2]).all() and (out[2] == 0).all()
