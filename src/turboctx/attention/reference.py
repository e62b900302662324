"""Slow, exact attention references (float64, explicit masks). Every kernel is tested against these."""
from __future__ import annotations

import torch


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                        scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q: [n, H, D]; k, v: [m, Hkv, D]; mask: [n, m] or [H, n, m] bool (True = attend).

    Returns out [n, H, D] (float64) and lse [n, H] (float64); rows with no key get out 0, lse -inf.
    """
    n, H, D = q.shape
    G = H // k.shape[1]
    kk = k.double().repeat_interleave(G, 1)       # [m, H, D]
    vv = v.double().repeat_interleave(G, 1)
    s = torch.einsum("nhd,mhd->hnm", q.double(), kk) * scale   # [H, n, m]
    s = s.masked_fill(~mask.expand_as(s), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)                              # [H, n]
    p = torch.exp(s - lse[..., None]).nan_to_num(0.0)
    out = torch.einsum("hnm,mhd->nhd", p, vv)
    return out, lse.transpose(0, 1)


def causal_mask(q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """[n, m] bool: key position <= query position."""
    return k_pos[None, :] <= q_pos[:, None]
