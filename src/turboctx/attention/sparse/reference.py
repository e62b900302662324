"""Slow, exact references of the sparse paths (every fast path `<name>` is tested against its
`reference_<name>`): vertical-slash attention over an explicit [H, n, m] mask in float64, and the
estimation scores in plain torch (also the scores' CPU path: exact in fp32, small sizes).
"""
from __future__ import annotations

import torch

from turboctx.attention.reference import reference_attention
from turboctx.attention.sparse.blocks import vertical_slash_mask
from turboctx.attention.sparse.pattern import Segment, VSPattern, as_segments, num_bands


def reference_vertical_slash_attention(q, k, v, pattern: VSPattern, *, start: int,
                             scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 reference. q: [n, H, D]; k, v: [Hkv, m, D] -> out [n, H, D], lse [n, H]."""
    mask = vertical_slash_mask(pattern, q.shape[0], start)
    return reference_attention(q, k.transpose(0, 1), v.transpose(0, 1), mask, scale)


def reference_vertical_slash_scores(q_last: torch.Tensor | list[Segment], k: torch.Tensor, q_pos0: int,
                                *, scale: float, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of estimation (scores.vertical_slash_scores), in fp32 torch. q_last: [L, H, D] at positions q_pos0 .. q_pos0+L-1 (or segments);
    k: [Hkv, m, D] at positions 0 .. m-1, m >= q_pos0 + L.
    Returns vert [H, m] (column sums of the causal softmax over the L queries) and
    band [H, nb] (sums over each block diagonal t = qa - kb), float32."""
    Hkv, m, D = k.shape
    segs = as_segments(q_last, m)
    L, H, _ = segs[0][2].shape
    G, B = H // Hkv, block_size
    assert q_pos0 + L <= m, "the last queries must see their own keys"
    future = torch.arange(m, device=k.device)[None, :] > \
        torch.arange(q_pos0, q_pos0 + L, device=k.device)[:, None]              # [L, m]
    verts, bands = [], []
    for g in range(Hkv):   # one kv head's query group at a time: [G, L, m] scores at most
        s = torch.empty(G, L, m, dtype=torch.float32, device=k.device)
        for lo, hi, q in segs:
            qg = q[:, g * G:(g + 1) * G].permute(1, 0, 2).float()                # [G, L, D]
            s[:, :, lo:hi] = torch.matmul(qg, k[g, lo:hi].float().T) * scale
        p = torch.softmax(s.masked_fill_(future, float("-inf")), dim=-1)        # [G, L, m]
        verts.append(p.sum(1))
        bands.append(block_diagonal_sums(p, q_pos0, B))
    return torch.cat(verts), torch.cat(bands)


def block_diagonal_sums(p: torch.Tensor, q_pos0: int, B: int) -> torch.Tensor:
    """p: [h, L, m] probabilities of queries at positions q_pos0.. -> [h, nb]: the sum over each
    block diagonal t (entries with query block - key block = t, blocks of B aligned to 0)."""
    h, L, m = p.shape
    nb = num_bands(m, B)
    blk = torch.nn.functional.pad(p, (0, nb * B - m)).view(h, L, nb, B).sum(-1)   # [h, L, nb]
    out = torch.zeros(h, nb, dtype=p.dtype, device=p.device)
    qa = (q_pos0 + torch.arange(L)) // B
    for a in qa.unique().tolist():                        # <= (L - 1) // B + 2 query blocks
        rows = blk[:, (qa == a).to(p.device)].sum(1)                          # [h, nb] by key block
        out[:, :a + 1] += rows[:, :a + 1].flip(-1)                            # t = a - kb
    return out
