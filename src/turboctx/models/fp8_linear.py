"""FP8 linear layers (quantization='fp8'): e4m3 weights with one scale per output channel,
computed at load; activations quantized per token at run time; output in the model's dtype.

The fast path is `torch._scaled_mm` with row-wise scales (FP8 tensor cores: NVIDIA compute
capability 8.9 and later). `fp8_linear_reference` is its slow exact reference: the same quantized
values, dequantized and multiplied in float32; CPU tensors take it (tests), the engine itself
refuses FP8 layers off such GPUs (config/engine.py). The scheme is vLLM's dynamic FP8
(per-channel weight scales, per-token activation scales = amax / 448).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from turboctx.config.checkpoint_quantization import PROJECTION_KINDS

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max           # 448
MIN_SCALE = 1e-12                        # an all-zero row keeps a finite scale
QUANTIZED_LAYERS = PROJECTION_KINDS      # a decoder layer's projections; lm_head stays as loaded
FP8_CAPABILITY = (8, 9)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [R, C] -> (q [R, C] e4m3, scale [R, 1] float32) with x ~ q * scale, |q| <= 448."""
    scale = (x.abs().amax(dim=-1, keepdim=True).float() / FP8_MAX).clamp_(min=MIN_SCALE)
    return (x.float() / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8), scale


def quantize_weight(w: torch.Tensor, rows: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """w [out, in] -> (e4m3 [out, in], scale [out] float32), a block of rows at a time (a
    float32 copy of a whole 7B MLP weight would be 0.5 GB)."""
    q = torch.empty(w.shape, dtype=FP8, device=w.device)
    scale = torch.empty(w.shape[0], dtype=torch.float32, device=w.device)
    for s in range(0, w.shape[0], rows):
        q[s:s + rows], sc = quantize_rows(w[s:s + rows])
        scale[s:s + rows] = sc[:, 0]
    return q, scale


def fp8_linear_reference(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                         bias: torch.Tensor | None) -> torch.Tensor:
    """x [N, in] (model dtype) -> [N, out]: x quantized per token as the fast path does, both
    operands dequantized, multiplied and summed in float32, the bias added, then rounded."""
    xq, xs = quantize_rows(x)
    y = (xq.float() * xs) @ (weight.float() * weight_scale[:, None]).t()     # [N, out]
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


_quantize_rows = quantize_rows     # the CUDA path's quantizer (torch.compile'd: enable_compiled)


def enable_compiled() -> None:
    """One fused kernel for the per-token quantization instead of four passes over memory."""
    global _quantize_rows
    if _quantize_rows is quantize_rows:
        _quantize_rows = torch.compile(quantize_rows, dynamic=True)


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
               bias: torch.Tensor | None) -> torch.Tensor:
    """The fast path on CUDA (row-wise scaled FP8 GEMM, float32 accumulation), else the reference."""
    if not x.is_cuda:
        return fp8_linear_reference(x, weight, weight_scale, bias)
    xq, xs = _quantize_rows(x)
    return torch._scaled_mm(xq, weight.t(), scale_a=xs, scale_b=weight_scale.view(1, -1),
                            bias=bias, out_dtype=x.dtype)


class Fp8Linear(nn.Module):
    """An nn.Linear's replacement: weight [out, in] e4m3 and weight_scale [out] float32 buffers.
    `group` (tensor parallelism, a row-parallel layer): the partial products are all-reduced
    before the bias is added once."""

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
                 group=None):
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", weight_scale)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.group = group

    @classmethod
    def from_linear(cls, layer: nn.Linear) -> "Fp8Linear":
        q, scale = quantize_weight(layer.weight.data)
        bias = None if layer.bias is None else layer.bias.data
        return cls(q, scale, bias, getattr(layer, "group", None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)                               # [N, in]
        if x2.shape[0] == 0:
            return x.new_empty(*lead, self.out_features)
        if self.group is None:
            y = fp8_linear(x2, self.weight, self.weight_scale, self.bias)
        else:
            y = fp8_linear(x2, self.weight, self.weight_scale, None)
            dist.all_reduce(y, group=self.group)
            if self.bias is not None:
                y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3"


def quantize_linear_layers(model: nn.Module, keep: tuple[str, ...] = (),
                           keep_modules: tuple[str, ...] = ()) -> int:
    """Every decoder layer's projections (QUANTIZED_LAYERS) swapped for Fp8Linear in place, the
    full-precision weights freed as it goes, but the kinds in `keep` (quantization_ignored_layers)
    and the modules in `keep_modules` (paths such as "model.layers.3.self_attn.qkv_proj": those
    an FP8 checkpoint ships in full precision); returns how many were swapped."""
    count, kept = 0, set(keep_modules)
    for i, layer in enumerate(model.model.layers):
        for where, parent, fused in (("self_attn", layer.self_attn, "qkv_proj"),
                                     ("mlp", layer.mlp, "gate_up_proj")):
            for name in QUANTIZED_LAYERS:
                lin = getattr(parent, name, None)
                if isinstance(lin, nn.Linear) and name not in keep and \
                        f"model.layers.{i}.{where}.{name}" not in kept:
                    setattr(parent, name, Fp8Linear.from_linear(lin))
                    count += 1
            if not isinstance(getattr(parent, fused), nn.Linear):
                parent.split_matmuls = False  # the split products read a full-precision weight
    return count


def fp8_support_problem(device: torch.device) -> str | None:
    """Why FP8 linear layers cannot run on this device, or None when they can."""
    if device.type != "cuda":
        return (f"quantization='fp8' needs an NVIDIA GPU with FP8 tensor cores (compute "
                f"capability {FP8_CAPABILITY[0]}.{FP8_CAPABILITY[1]}+: L4, L40S, H100, H200, B200); "
                f"this device is {device.type}; leave quantization unset")
    cap = torch.cuda.get_device_capability(device)
    if cap < FP8_CAPABILITY:
        return (f"quantization='fp8' needs FP8 tensor cores (compute capability "
                f"{FP8_CAPABILITY[0]}.{FP8_CAPABILITY[1]}+); {torch.cuda.get_device_name(device)} "
                f"is {cap[0]}.{cap[1]}; leave quantization unset")
    return None
