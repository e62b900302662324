"""Vertical-slash pattern estimation (MInference, arXiv 2407.02490, §3.2 / Alg. 1), in block
diagonals.

Per query head, the last `last_q` queries of a prefill chunk are scored against every key
(cache + chunk) with the causal mask; their softmax probabilities, summed over those queries, give
  - a score per key column                          -> the top-v "vertical" columns (sinks, anchors);
  - a score per block diagonal t (the entries whose query block qa and key block kb, blocks of B
    aligned to absolute positions, satisfy qa - kb = t)  -> the top ceil(s / B) "slash" block
    diagonals.
The first `sink_tokens` columns and the block diagonals holding the `local_diagonals` diagonals
nearest the main one (t = 0 .. ceil((local_diagonals - 1) / B)) are always kept (vLLM dual-chunk
backend / MInference: `vertical[..., :30] = inf`, `slash[..., -100:] = inf`).

Why block diagonals: a block kernel computes whole B x B blocks. A block diagonal is exactly one
key block per query block, B keys per query: s slash lines buy ceil(s / B) of them, the same
number of attended keys per query as s single lines. Lines picked one by one (or in bands of B
lines) straddle two key blocks per query block and cost twice their budget whenever they scatter,
as they do on random weights. The block-diagonal score is the attention mass of the scored
queries inside it, so the choice maximizes their recall at block granularity. A single line at
offset d lies in block diagonals ceil(d / B) and floor(d / B) (row r of a block meets it in
ceil((d - r) / B)); the scored rows split its mass between the two by their offsets in the block,
so a strong line may keep only its larger half when the budget is tight.
(The field keeps MInference's word: `VSPattern.bands` holds the selected block diagonals.)

Scores come from scores.vertical_slash_scores: the fused Triton kernel on CUDA
(scores_triton.py), which never materializes [H, L, m]; elsewhere the torch reference
(reference.reference_vertical_slash_scores: two passes over [G, L, m] probabilities per kv head).

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
    bands: torch.Tensor      # [H, NB] int64 slash block diagonals t, ascending, -1 padded at the end
    block_size: int          # B: block width of the kernels (queries and keys)

    @property
    def num_heads(self) -> int:
        return self.vertical.shape[0]

    def to(self, device) -> "VSPattern":
        return VSPattern(self.vertical.to(device), self.bands.to(device), self.block_size)


def num_bands(m: int, block_size: int) -> int:
    """Block diagonals t = qa - kb that m keys can hold (t = 0 .. (m - 1) // B)."""
    return (m + block_size - 1) // block_size


def _top_sorted(scores: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """scores [H, m], counts[h] <= m -> indices of each head's top counts[h], ascending, -1 padded."""
    H, m = scores.shape
    top = torch.topk(scores, max(counts), dim=-1).indices                # best first
    if len(set(counts)) > 1:   # per-head counts (a calibrated file); uniform ones need no copy
        keep = torch.arange(top.shape[1], device=scores.device) < _as_tensor(counts, scores.device)[:, None]
        top = torch.where(keep, top, m)
    idx = top.sort(-1).values
    return idx.masked_fill_(idx == m, -1)


_COUNTS: dict = {}


def _as_tensor(counts: list[int], device) -> torch.Tensor:
    """Per-head counts on the device, cached: budgets repeat every chunk (no copy per call)."""
    key = (tuple(counts), str(device))
    if key not in _COUNTS:
        if len(_COUNTS) > 4096:
            _COUNTS.clear()
        _COUNTS[key] = torch.tensor(counts, device=device)
    return _COUNTS[key]


def select_vertical_slash(vert: torch.Tensor, band: torch.Tensor, budgets: list[tuple[int, int]],
                          *, block_size: int, sink_tokens: int = 30,
                          local_diagonals: int = 100) -> VSPattern:
    """vert: [H, m] column scores; band: [H, nb] band scores -> the pattern.

    budgets[h] = (v, s): head h keeps min(max(v, sink_tokens), m) columns and
    min(max(ceil(s / B), forced), nb) block diagonals, the forced ones included
    (forced = forced_bands(local_diagonals, B)).
    """
    H, m = vert.shape
    nb = band.shape[1]
    assert len(budgets) == H, f"{len(budgets)} budgets for {H} heads"
    B = block_size
    vert, band = vert.clone(), band.clone()
    vert[:, :sink_tokens] = float("inf")
    forced = forced_bands(local_diagonals, B)
    band[:, :forced] = float("inf")
    nv = [min(max(v, sink_tokens), m) for v, _ in budgets]
    ns = [min(max((s + B - 1) // B, forced), nb) for _, s in budgets]
    return VSPattern(_top_sorted(vert, nv), _top_sorted(band, ns), B)


def forced_bands(local_diagonals: int, block_size: int) -> int:
    """Block diagonals t = 0 .. T-1 that hold diagonals 0 .. local_diagonals-1 for every row:
    row r of a query block meets diagonal d in block diagonal ceil((d - r) / B) <= ceil(d / B)."""
    return (max(local_diagonals, 1) - 1 + block_size - 1) // block_size + 1


def as_segments(q_last: torch.Tensor | list[Segment], m: int) -> list[Segment]:
    if isinstance(q_last, torch.Tensor):
        return [(0, m, q_last)]
    assert sum(hi - lo for lo, hi, _ in q_last) == m, "segments must cover the keys exactly once"
    return list(q_last)
