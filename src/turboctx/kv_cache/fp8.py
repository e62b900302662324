"""The FP8 KV cache format: e4m3 values with one bf16 scale per token and KV head.

A key (or value) vector x [D] of one token and KV head is stored as
    scale = bf16(amax(|x|) / 448)            (448: e4m3's largest finite value)
    data  = e4m3(clamp(x / scale, -448, 448)) (round to nearest even)
and read back as data * scale in the compute dtype. Per-token scales cost 2 bytes per 128-byte
head vector (1.6%) and never saturate: a token with outliers gets its own range, which a scale
per layer and head (fixed before the data is seen) cannot give. A checkpoint that ships static
scales (vLLM's `k_scale` / `v_scale` per layer, optionally per KV head) has them used instead:
every token then gets that scale, and values beyond 448 x scale saturate, as in vLLM.

`quantize` and `dequantize` are the reference every path follows: the cache writes of prefill
and eager decode call them; the Triton decode kernels (attention/decode_kernel.py) compute the
same formula in-kernel.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
SCALE_DTYPE = torch.bfloat16


def quantize(x: torch.Tensor, static_scale: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [..., D] -> (data [..., D] e4m3, scale [...] bf16) with x ~= data * scale.
    static_scale: broadcastable to x.shape[:-1] (a checkpoint's scale), else computed per vector."""
    xf = x.float()
    if static_scale is None:
        amax = xf.abs().amax(-1)
        scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax)).to(SCALE_DTYPE)
    else:
        scale = static_scale.to(device=x.device, dtype=SCALE_DTYPE).expand(x.shape[:-1])
    data = (xf / scale.float()[..., None]).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return data, scale.contiguous()


def dequantize(data: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """data [..., D] e4m3, scale [...] -> [..., D] in dtype (e4m3 values are exact in bf16/fp32;
    the product is rounded once, to dtype). In place on the converted copy: one buffer."""
    out = data.to(dtype)
    return out.mul_(scale.to(dtype)[..., None])


def fake_quantize(x: torch.Tensor, static_scale: torch.Tensor | None = None) -> torch.Tensor:
    """What reading x back from the FP8 cache gives: the reference the tests compare with."""
    data, scale = quantize(x, static_scale)
    return dequantize(data, scale, x.dtype)


@dataclass(frozen=True)
class FP8Layer:
    """One layer's keys (or values) in the FP8 cache."""
    data: torch.Tensor                   # [Hkv, slots, D] e4m3
    scale: torch.Tensor                  # [Hkv, slots] bf16
    dtype: torch.dtype                   # what reads return (the model's dtype)
    static_scale: torch.Tensor | None    # [Hkv] float32 from the checkpoint, else None

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @property
    def device(self) -> torch.device:
        return self.data.device

