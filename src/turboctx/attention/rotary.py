"""Rotary position embedding (rotate-half layout) and the frequency scalings of Llama 3 and YaRN.
Attention applies it: models hand over un-rotated q/k (attention/backend.py)."""
from __future__ import annotations

import math

import torch
from torch import nn


def _llama3_inv_freq(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    # Llama 3.1 frequency-dependent scaling (as in Meta's reference and HF transformers).
    factor, low, high = s["factor"], s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
    old_len = s["original_max_position_embeddings"]
    low_wl, high_wl = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wl, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wl) & (wavelen <= low_wl)
    return torch.where(medium, smoothed, scaled)


def _yarn_inv_freq(inv_freq: torch.Tensor, dim: int, base: float, s: dict,
                   max_pos: int) -> tuple[torch.Tensor, float]:
    # YaRN (Peng et al. 2023) NTK-by-parts interpolation, as HF transformers computes it.
    factor = s["factor"]
    orig = s.get("original_max_position_embeddings", max_pos)
    beta_fast, beta_slow = s.get("beta_fast", 32), s.get("beta_slow", 1)
    attn_factor = s.get("attention_factor") or (0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0)

    def corr_dim(rot):
        return (dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(base))

    low = max(math.floor(corr_dim(beta_fast)), 0)
    high = min(math.ceil(corr_dim(beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1 - ramp
    inv = (inv_freq / factor) * (1 - extrapolation) + inv_freq * extrapolation
    return inv, attn_factor


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (rotate-half layout). cos/sin computed per position on demand."""

    def __init__(self, head_dim: int, theta: float, scaling: dict | None = None,
                 max_position_embeddings: int = 4096):
        super().__init__()
        self.head_dim = head_dim
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.attention_scaling = 1.0
        rtype = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
        if rtype == "linear":
            inv_freq = inv_freq / scaling["factor"]
        elif rtype == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, scaling)
        elif rtype == "yarn":
            inv_freq, self.attention_scaling = _yarn_inv_freq(
                inv_freq, head_dim, theta, scaling, max_position_embeddings)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    @torch.no_grad()
    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [N] int -> cos, sin: [N, head_dim] in `dtype`."""
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling
        return cos.to(dtype), sin.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [N, H, D]; cos/sin: [N, D] -> [N, H, D]."""
    cos, sin = cos[:, None, :], sin[:, None, :]
    return x * cos + rotate_half(x) * sin
