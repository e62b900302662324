"""Slow, exact references (float64, explicit masks or position matrices, small sizes): every fast
path of this package is tested against the `reference_<name>` of its own `<name>`.

  reference_attention        ops.attend (and the dense prefill / decode built from it)
  reference_decode_attention decode_kernel.decode_attention (CUDA-graph decode)
  reference_dca_attention    the DCA positions (dca.py), eager and graph decode
  (the sparse subpackage keeps its references in sparse/reference.py)
"""
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


def reference_decode_attention(q, k_cache, v_cache, seq_lens, slot_starts, scale):
    """Same contract as decode_kernel.decode_attention: q [B, H, D]; caches [Hkv, slots, D];
    lengths and first slots [B] (length 0: out 0, lse -inf). float64."""
    B, H, D = q.shape
    out = torch.zeros(B, H, D, dtype=torch.float64)
    lse = torch.full((B, H), float("-inf"), dtype=torch.float64)
    for b in range(B):
        n, s0 = int(seq_lens[b]), int(slot_starts[b])
        if n == 0:
            continue
        keys = k_cache[:, s0:s0 + n].transpose(0, 1).cpu()     # [n, Hkv, D]
        vals = v_cache[:, s0:s0 + n].transpose(0, 1).cpu()
        o, l = reference_attention(q[b:b + 1].cpu(), keys, vals, torch.ones(1, n, dtype=torch.bool), scale)
        out[b], lse[b] = o[0], l[0]
    return out, lse


# -- Dual Chunk Attention ----------------------------------------------------------------------
# Shares nothing with dca.py's decomposition: it writes down, for every (query, key) pair, the
# query's and the key's DCA positions (An et al. 2024, Fig. 2), and scores each pair from the
# un-rotated q/k through the rotary identity
# <R(a) q, R(b) k> = sum_f (q1 k1 + q2 k2) cos((a - b) w_f) + (q1 k2 - q2 k1) sin((a - b) w_f)
# (rotate-half layout: q1/q2 the two halves of q, w_f the inverse frequencies).

def dca_position_matrices(q_pos: torch.Tensor, k_pos: torch.Tensor, chunk_size: int,
                          local_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q_pos: [n], k_pos: [m] absolute positions -> (query position [n, m], key position [n, m],
    causal mask [n, m]) as DCA assigns them to each pair."""
    cl = chunk_size - local_size
    cq, rq = (q_pos // cl)[:, None], (q_pos % cl)[:, None]
    ck = (k_pos // cl)[None, :]
    kp = (k_pos % cl)[None, :].expand(len(q_pos), len(k_pos))
    far = torch.full_like(kp, chunk_size - 1)
    qp = torch.where(ck == cq, rq.expand_as(kp),                                  # intra-chunk
         torch.where(ck == cq - 1, torch.minimum(rq + cl, far), far))             # successive / inter
    mask = k_pos[None, :] <= q_pos[:, None]
    return qp, kp, mask


def dca_relative_positions(q_pos, k_pos, chunk_size: int, local_size: int) -> torch.Tensor:
    """The paper's matrix M: M[i, j] = query position - key position (-1 where masked)."""
    qp, kp, mask = dca_position_matrices(q_pos, k_pos, chunk_size, local_size)
    return torch.where(mask, qp - kp, torch.full_like(qp, -1))


def yarn_logit_scale(length: int, original_max_position_embeddings: int) -> float:
    """YaRN: q and k each scaled by 0.1 ln s + 1 when s = length / trained length > 1."""
    s = torch.tensor(length / original_max_position_embeddings, dtype=torch.float64)
    return float((0.1 * torch.log(s) + 1) ** 2) if s > 1 else 1.0


def reference_dca_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            q_pos: torch.Tensor, k_pos: torch.Tensor, chunk_size: int,
                            local_size: int, inv_freq: torch.Tensor, scale: float,
                            rotary_scaling: float = 1.0,
                            logit_scale: torch.Tensor | None = None,
                            mask: torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """q: [n, H, D], k/v: [m, Hkv, D] un-rotated; q_pos [n], k_pos [m] absolute positions.

    inv_freq: [D/2] rotary inverse frequencies; rotary_scaling: the rotary's cos/sin multiplier
    (logits get its square); logit_scale: [n] extra per-query logit multiplier (YaRN);
    mask: [H, n, m] bool, an attended set within the causal one (sparse attention with DCA).
    Returns out [n, H, D] and lse [n, H] in float64.
    """
    n, H, D = q.shape
    G = H // k.shape[1]
    qp, kp, causal = dca_position_matrices(q_pos, k_pos, chunk_size, local_size)
    rel = (qp - kp).double()                                            # [n, m]
    q = q.double()
    kk, vv = k.double().repeat_interleave(G, 1), v.double().repeat_interleave(G, 1)  # [m, H, D]
    k1, k2 = kk[..., : D // 2], kk[..., D // 2:]
    w = inv_freq.double()
    mult = torch.ones(n, dtype=torch.float64) if logit_scale is None else logit_scale.double()
    out = torch.zeros(n, H, D, dtype=torch.float64)
    lse = torch.zeros(n, H, dtype=torch.float64)
    for i in range(n):
        ang = rel[i][:, None] * w[None, :]                              # [m, D/2]
        q1, q2 = q[i, :, : D // 2], q[i, :, D // 2:]                    # [H, D/2]
        a = torch.einsum("hf,mhf->mhf", q1, k1) + torch.einsum("hf,mhf->mhf", q2, k2)
        b = torch.einsum("hf,mhf->mhf", q1, k2) - torch.einsum("hf,mhf->mhf", q2, k1)
        s = (a * ang.cos()[:, None] + b * ang.sin()[:, None]).sum(-1).T  # [H, m]
        s = s * (scale * rotary_scaling ** 2 * mult[i])
        ok = causal[i][None, :] if mask is None else causal[i][None, :] & mask[:, i]
        s = s.masked_fill(~ok, float("-inf"))
        lse[i] = torch.logsumexp(s, -1)
        out[i] = torch.einsum("hm,mhd->hd", torch.exp(s - lse[i][:, None]), vv)
    return out, lse
