"""Building blocks shared by the model families: RMSNorm, the gated MLP and their fused ops.
(Rotary positions belong to attention: turboctx/attention/rotary.py.)"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm computed in float32, rounded, then scaled (the Llama/Qwen2 reference order)."""
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


class FusedOps:
    """The elementwise chains of a layer. Eager by default; `enable_compiled()` swaps in
    torch.compile'd versions (one fused kernel each instead of 4-6 passes over memory), which pays
    on GPUs for long chunks. Same arithmetic, so same results up to rounding order."""
    rms_norm = staticmethod(rms_norm)
    silu_mul = staticmethod(silu_mul)
    compiled = False

    @classmethod
    def enable_compiled(cls) -> None:
        if not cls.compiled:
            # not fullgraph: past Dynamo's recompile limit (a process that loads many models or
            # dtypes) a function then runs eagerly instead of raising in the middle of a request
            cls.rms_norm = staticmethod(torch.compile(rms_norm, dynamic=True))
            cls.silu_mul = staticmethod(torch.compile(silu_mul, dynamic=True))
            cls.compiled = True


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return FusedOps.rms_norm(x, self.weight, self.eps)


class GatedMLP(nn.Module):
    """SwiGLU MLP with gate and up projections fused into one matmul.

    Long inputs go through in row slices of `max_rows` tokens: the MLP is per token, so this
    changes nothing but the peak of the [N, 2I] + [N, I] intermediates (a 32K-token chunk of a 7B
    model: 3.7 GB at once, 0.9 GB in 8K slices), while each slice's matmuls stay large."""

    max_rows = 8192

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.intermediate_size = intermediate_size
        self.gate_up_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.split_matmuls = False   # one product per half of the fused weight (faster on CPU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N = x.shape[0]
        if N <= self.max_rows:
            return self._forward(x)
        out = torch.empty(N, self.down_proj.out_features, dtype=x.dtype, device=x.device)
        for s in range(0, N, self.max_rows):
            out[s:s + self.max_rows] = self._forward(x[s:s + self.max_rows])
        return out

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split_matmuls:
            w_gate, w_up = self.gate_up_proj.weight.split(self.intermediate_size, dim=0)
            gate, up = F.linear(x, w_gate), F.linear(x, w_up)
        else:
            gate, up = self.gate_up_proj(x).split(self.intermediate_size, dim=-1)
        return self.down_proj(FusedOps.silu_mul(gate, up))
