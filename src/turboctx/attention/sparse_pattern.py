"""Vertical-slash pattern estimation (MInference, arXiv 2407.02490, §3.2 / Alg. 1), in bands.

Per query head, the last `last_q` queries of a prefill chunk are scored against every key
(cache + chunk) with the causal mask; softmax probabilities summed over those queries give
  - a score per key column                       -> the top-v "vertical" columns (sinks, anchors);
  - a score per diagonal d = query pos - key pos, summed over each aligned band of B consecutive
    diagonals (band b = diagonals [b*B, (b+1)*B))  -> the top ceil(s / B) "slash" bands.
The first `sink_tokens` columns and the bands holding the `local_diagonals` diagonals nearest the
main one are always kept (vLLM dual-chunk backend / MInference: `vertical[..., :30] = inf`,
`slash[..., -100:] = inf`).

Why bands: a block kernel computes whole B x B blocks. With query blocks aligned to B, one band
costs exactly two key blocks per query block (sparse_blocks.py), half of them on the band's own
lines, whereas single diagonals picked one by one scatter over ~2 blocks *each*. A band is the
selection granularity of the kernel, not a budget cut: `s` slash lines buy ceil(s / B) bands, and
every line inside a selected band is computed anyway by any block kernel.

Scores come from `vertical_slash_scores`: the torch reference here (two passes over [G, L, m]
probabilities per kv head; CPU, CI, small sizes) or the fused Triton kernel
(sparse_estimate_kernel.py; CUDA), which never materializes [H, L, m].

Positions: q/k are rotated however the caller wants the pattern judged. With DCA the keys in the
cache carry DCA positions; `segments` then gives, per key range, the queries rotated so that
their products with those keys equal products at continuous positions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# (k_lo, k_hi, q) : keys [k_lo, k_hi) are scored against q [L, H, D]
Segment = tuple[int, int, torch.Tensor]


@dataclass
class VSPattern:
    """The selection of one chunk and layer. Key indices are absolute (0 = the first token)."""
    vertical: torch.Tensor   # [H, V] int64 key columns, ascending, -1 padded at the end
    bands: torch.Tensor      # [H, NB] int64 slash bands, ascending, -1 padded at the end
    block_size: int          # B: band width = block width of the kernels

    @property
    def num_heads(self) -> int:
        return self.vertical.shape[0]

    def to(self, device) -> "VSPattern":
        return VSPattern(self.vertical.to(device), self.bands.to(device), self.block_size)


def num_bands(m: int, block_size: int) -> int:
    """Bands that can hold a diagonal of m keys (offsets 0 .. m-1)."""
    return (m + block_size - 1) // block_size


def _top_sorted(scores: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """scores [H, m], counts[h] <= m -> indices of each head's top counts[h], ascending, -1 padded."""
    H, m = scores.shape
    top = torch.topk(scores, max(counts), dim=-1).indices                # best first
    keep = torch.arange(top.shape[1], device=scores.device) < \
        torch.tensor(counts, device=scores.device)[:, None]
    idx = torch.where(keep, top, m).sort(-1).values
    return idx.masked_fill_(idx == m, -1)


def select_vertical_slash(vert: torch.Tensor, band: torch.Tensor, budgets: list[tuple[int, int]],
                          *, block_size: int, sink_tokens: int = 30,
                          local_diagonals: int = 100) -> VSPattern:
    """vert: [H, m] column scores; band: [H, nb] band scores -> the pattern.

    budgets[h] = (v, s): head h keeps min(max(v, sink_tokens), m) columns and
    min(ceil(max(s, local_diagonals) / B), nb) bands, the forced ones included.
    """
    H, m = vert.shape
    nb = band.shape[1]
    assert len(budgets) == H, f"{len(budgets)} budgets for {H} heads"
    B = block_size
    vert, band = vert.clone(), band.clone()
    vert[:, :sink_tokens] = float("inf")
    band[:, :(local_diagonals + B - 1) // B] = float("inf")
    nv = [min(max(v, sink_tokens), m) for v, _ in budgets]
    ns = [min((max(s, local_diagonals) + B - 1) // B, nb) for _, s in budgets]
    return VSPattern(_top_sorted(vert, nv), _top_sorted(band, ns), B)


def as_segments(q_last: torch.Tensor | list[Segment], m: int) -> list[Segment]:
    if isinstance(q_last, torch.Tensor):
        return [(0, m, q_last)]
    assert sum(hi - lo for lo, hi, _ in q_last) == m, "segments must cover the keys exactly once"
    return list(q_last)


def vertical_slash_scores_torch(q_last: torch.Tensor | list[Segment], k: torch.Tensor, q_pos0: int,
                                *, scale: float, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference scores. q_last: [L, H, D] at positions q_pos0 .. q_pos0+L-1 (or segments);
    k: [Hkv, m, D] at positions 0 .. m-1, m >= q_pos0 + L.
    Returns vert [H, m] (column sums of the causal softmax over the L queries) and
    band [H, nb] (sums over each band of B diagonals), float32."""
    Hkv, m, D = k.shape
    segs = as_segments(q_last, m)
    L, H, _ = segs[0][2].shape
    G, B, nb = H // Hkv, block_size, num_bands(m, block_size)
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
        diag = diagonal_sums(p, q_pos0)                                          # [G, m]
        bands.append(torch.nn.functional.pad(diag, (0, nb * B - m)).view(G, nb, B).sum(-1))
    return torch.cat(verts), torch.cat(bands)


def diagonal_sums(p: torch.Tensor, q_pos0: int) -> torch.Tensor:
    """p: [h, L, m] probabilities of queries at positions q_pos0.. -> [h, m]: sum over each
    diagonal d (key = query position - d), d = 0..m-1 (MInference sum_all_diagonal_matrix)."""
    h, L, m = p.shape
    assert q_pos0 + L <= m, "the last queries must see their own keys"
    # Row i (position q_pos0 + i) holds diagonal d at column q_pos0 + i - d. Flipped, that is
    # column e0 - i + d (e0 = m - 1 - q_pos0): a shear, read as one strided view of the padded rows.
    x = torch.nn.functional.pad(p.flip(-1), (0, m)).contiguous()          # [h, L, 2m]
    e0 = m - 1 - q_pos0
    sheared = x.as_strided((h, L, m), (L * 2 * m, 2 * m - 1, 1), x.storage_offset() + e0)
    return sheared.sum(1)


def vertical_slash_scores(q_last, k, q_pos0: int, *, scale: float, block_size: int,
                          kernel: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch: 'triton' (fused kernel, CUDA), 'torch' (reference), 'auto' (triton on CUDA)."""
    if kernel == "triton" or (kernel == "auto" and k.device.type == "cuda"):
        from turboctx.attention.sparse_estimate_kernel import vertical_slash_scores_triton
        return vertical_slash_scores_triton(q_last, k, q_pos0, scale=scale, block_size=block_size)
    return vertical_slash_scores_torch(q_last, k, q_pos0, scale=scale, block_size=block_size)


def estimate_vertical_slash(q_last, k: torch.Tensor, q_pos0: int, budgets: list[tuple[int, int]],
                            *, scale: float, block_size: int, sink_tokens: int = 30,
                            local_diagonals: int = 100, kernel: str = "auto") -> VSPattern:
    """Scores of the last queries, then each head's top columns and bands (see the module doc).

    q_last: [L, H, D] rotated at positions q_pos0 .. q_pos0+L-1, or DCA segments;
    k: [Hkv, m, D], every key the chunk sees, m >= q_pos0 + L.
    """
    vert, band = vertical_slash_scores(q_last, k, q_pos0, scale=scale, block_size=block_size,
                                       kernel=kernel)
    return select_vertical_slash(vert, band, budgets, block_size=block_size,
                                 sink_tokens=sink_tokens, local_diagonals=local_diagonals)
