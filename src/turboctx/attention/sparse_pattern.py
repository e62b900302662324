"""Vertical-slash pattern estimation (MInference, arXiv 2407.02490, §3.2 / Alg. 1).

Per query head, the last `last_q` queries of a prefill chunk are scored against every key
(cache + chunk) with the causal mask; softmax probabilities summed over those queries give
  - a score per key column   -> the top-v "vertical" columns (sinks, anchors),
  - a score per diagonal d = query position - key position -> the top-s "slash" diagonals.
The first `sink_tokens` columns and the `local_diagonals` diagonals nearest the main one are
always kept (vLLM dual-chunk backend / MInference: `vertical[..., :30] = inf`,
`slash[..., -100:] = inf`). Memory: [G * last_q, m] scores per kv head at a time, never n x m.

Positions are whatever q/k were rotated with: a DCA backend estimates with q/k rotated by
continuous positions and then runs the sparse attention per DCA part with its own rotations.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class VSPattern:
    """The selection for one chunk. Key indices are absolute (0 = the sequence's first token)."""
    vertical: torch.Tensor   # [H, V] int64 key columns, ascending; -1 pads heads with fewer
    slash: torch.Tensor      # [H, S] int64 diagonal offsets d >= 0 (key = query pos - d); -1 pads

    @property
    def num_heads(self) -> int:
        return self.vertical.shape[0]

    def to(self, device) -> "VSPattern":
        return VSPattern(self.vertical.to(device), self.slash.to(device))


def _top_sorted(scores: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """scores [H, m], counts[h] <= m -> indices of each head's top counts[h], ascending, -1 padded."""
    H, m = scores.shape
    top = torch.topk(scores, max(counts), dim=-1).indices                # best first
    keep = torch.arange(top.shape[1], device=scores.device) < torch.tensor(counts, device=scores.device)[:, None]
    idx = torch.where(keep, top, m).sort(-1).values
    return idx.masked_fill_(idx == m, -1)


def attention_scores_last(q_last: torch.Tensor, k: torch.Tensor, q_pos0: int,
                          scale: float) -> torch.Tensor:
    """Causal softmax probabilities of the last queries: q_last [L, H, D] at positions
    q_pos0 .. q_pos0+L-1, k [Hkv, m, D] at positions 0..m-1 -> [H, L, m] float32."""
    L, H, D = q_last.shape
    Hkv, m, _ = k.shape
    G = H // Hkv
    qf = q_last.view(L, Hkv, G, D).permute(1, 2, 0, 3).reshape(Hkv, G * L, D)
    s = torch.matmul(qf.float(), k.float().transpose(1, 2)) * scale       # [Hkv, G*L, m]
    s = s.view(H, L, m)
    qpos = torch.arange(q_pos0, q_pos0 + L, device=k.device)
    future = torch.arange(m, device=k.device)[None, :] > qpos[:, None]     # [L, m]
    return torch.softmax(s.masked_fill_(future, float("-inf")), dim=-1)


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


def estimate_vertical_slash(q_last: torch.Tensor, k: torch.Tensor, q_pos0: int,
                            budgets: list[tuple[int, int]], *, scale: float, sink_tokens: int = 30,
                            local_diagonals: int = 100) -> VSPattern:
    """Select each query head's vertical columns and slash diagonals.

    q_last: [L, H, D], the chunk's last queries at positions q_pos0 .. q_pos0+L-1 (rotated);
    k: [Hkv, m, D], every key the chunk sees (rotated the same way), m >= q_pos0 + L.
    budgets[h] = (v, s). Head h keeps max(v, sink_tokens) columns and max(s, local_diagonals)
    diagonals (clipped to m): the forced ones plus the best-scoring rest.
    """
    L, H, D = q_last.shape
    Hkv, m, _ = k.shape
    G = H // Hkv
    assert len(budgets) == H, f"{len(budgets)} budgets for {H} heads"
    verts, slashes = [], []
    for g in range(Hkv):   # one kv head's query group at a time: [G, L, m] scores at most
        p = attention_scores_last(q_last[:, g * G:(g + 1) * G], k[g:g + 1], q_pos0, scale)
        vert = p.sum(1)                                     # [G, m]
        vert[:, :sink_tokens] = float("inf")
        slash = diagonal_sums(p, q_pos0)                    # [G, m]
        slash[:, :local_diagonals] = float("inf")
        verts.append(vert)
        slashes.append(slash)
    nv = [min(max(v, sink_tokens), m) for v, _ in budgets]
    ns = [min(max(s, local_diagonals), m) for _, s in budgets]
    return VSPattern(_top_sorted(torch.cat(verts), nv), _top_sorted(torch.cat(slashes), ns))
