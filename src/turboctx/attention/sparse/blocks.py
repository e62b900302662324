"""The attended set of vertical-slash attention: as key-block lists (what kernels take), as an
explicit mask (what references take), and counted in closed form (density).

Definition (B = pattern.block_size; positions absolute, keys 0 .. m-1, m = start + n):
  query row i of the chunk has position p_i = start + i and query block qa(i) = p_i // B;
  key j has key block j // B. Blocks are aligned to absolute positions, not to the chunk.
  Slash: key block kb is selected for (head h, query block qa) iff qa - kb = t for a selected
    block diagonal t of h (pattern.bands[h]): one key block per query block each.
  Entry (i, j) of head h is attended iff j <= p_i and
    (j // B is selected for (h, qa(i))  or  j is in vertical[h]).
Vertical columns are attended token by token from a compact gathered key set; the two parts are
disjoint (a column inside a selected block belongs to the block part) and merge by log-sum-exp.
"""
from __future__ import annotations

import torch

from turboctx.attention.sparse.pattern import VSPattern, num_bands

_BIG = 1 << 62


def band_table(pattern: VSPattern, num_keys: int) -> torch.Tensor:
    """The pattern's bands [H, NB] (-1 pads) over num_keys keys -> [H, size] bool, t -> band t
    selected. size > every band, a power of two (compiled kernels see few distinct shapes);
    taken from num_keys, not from the bands, so that no device value is read (no sync)."""
    bands = pattern.bands
    H = bands.shape[0]
    size = 1 << (num_bands(num_keys, pattern.block_size) + 1).bit_length()
    bt = torch.zeros(H, size + 1, dtype=torch.bool, device=bands.device)
    bt.scatter_(1, torch.where(bands >= 0, bands, size), True)
    return bt[:, :size]


def covered(bt: torch.Tensor, h, qa, kb):
    """Is key block kb selected for (head h, query block qa)? Broadcasts; bt from band_table."""
    t = qa - kb
    size = bt.shape[1]
    return (t >= 0) & (t < size) & bt[h, t.clamp(0, size - 1)]


def query_blocks(start: int, lo: int, hi: int, B: int) -> tuple[int, int, int]:
    """Rows [lo, hi) of a chunk starting at `start` -> (first query block, number, pad): padding
    `pad` dummy rows in front aligns the rows' first position to the block boundary."""
    first = (start + lo) // B
    pad = start + lo - first * B
    return first, (pad + hi - lo + B - 1) // B, pad


def slash_key_blocks(bands: torch.Tensor, qa: torch.Tensor, kb_lo: int, kb_hi: int) -> torch.Tensor:
    """Selected key blocks per (head, query block), restricted to [kb_lo, kb_hi) and causal.

    bands: [H, NB] block diagonals (distinct, -1 pads); qa: [nqb] absolute query blocks ->
    [H, nqb, NB] int64, ascending, then _BIG. From the band list directly: no [H, nqb, nkb] table.
    """
    x = qa[None, :, None] - bands[:, None, :]                                  # [H, nqb, NB]
    ok = (bands >= 0)[:, None, :] & (x >= kb_lo) & (x < kb_hi)
    return torch.where(ok, x, _BIG).sort(-1).values


def as_kv_lists(x: torch.Tensor, take: torch.Tensor, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [H, nqb, C] sorted blocks (_BIG = none), take [H, nqb, C] bool -> (num [1, H, nqb] int32,
    indices [1, H, nqb, C] int32, relative to `offset`, ascending, zero padded): BlockMask input."""
    y = torch.where(take & (x < _BIG), x, _BIG).sort(-1).values
    num = (y < _BIG).sum(-1).to(torch.int32)
    idx = torch.where(y < _BIG, y - offset, 0).to(torch.int32)
    return num[None], idx[None]


def kv_block_lists(pattern: VSPattern, start: int, lo: int, hi: int, k0: int, k1: int):
    """BlockMask inputs of the slash part for rows [lo, hi) of a chunk at `start` over keys
    [k0, k1). Query blocks are the absolute ones from `query_blocks` (rows front-padded);
    key block indices are relative to k0 // B. Blocks strictly below the diagonal and wholly
    inside [k0, k1) are full (no mask needed); the rest are partial.
    Returns (partial num, partial idx, full num, full idx) as from `as_kv_lists`."""
    B, dev = pattern.block_size, pattern.bands.device
    qa0, nqb, _ = query_blocks(start, lo, hi, B)
    qa = torch.arange(qa0, qa0 + nqb, device=dev)
    kb_lo, kb_hi = k0 // B, (k1 + B - 1) // B
    x = slash_key_blocks(pattern.bands, qa, kb_lo, kb_hi)                     # [H, nqb, C]
    full = (x < qa[None, :, None]) & (x * B >= k0) & ((x + 1) * B <= k1)
    return (*as_kv_lists(x, ~full, kb_lo), *as_kv_lists(x, full, kb_lo))


def _tri(y: torch.Tensor) -> torch.Tensor:
    y = torch.clamp(y, min=0)
    return y * (y + 1) // 2


def count_attended(pattern: VSPattern, n: int, start: int) -> torch.Tensor:
    """Attended (query, key) entries of the chunk per head: [H] int64, in closed form."""
    B, m = pattern.block_size, start + n
    dev = pattern.bands.device
    qa0, nqb, _ = query_blocks(start, 0, n, B)
    qa = torch.arange(qa0, qa0 + nqb, device=dev)
    first = torch.clamp(qa * B, min=start)[None, :, None]                      # [1, nqb, 1]
    last = torch.clamp(qa * B + B - 1, max=m - 1)[None, :, None]
    x = slash_key_blocks(pattern.bands, qa, 0, (m + B - 1) // B)                # [H, nqb, C]
    ok = x < _BIG
    lo = torch.where(ok, x, 0) * B
    hi = torch.clamp(lo + B, max=m)

    def relu_sum(k0):   # sum over rows p in [first, last] of max(p + 1 - k0, 0)
        return _tri(last + 1 - k0) - _tri(first - k0)
    block_part = ((relu_sum(lo) - relu_sum(hi)) * ok).sum((1, 2))
    vert = pattern.vertical                                                     # [H, V]
    j = vert.clamp(min=0)[:, None, :]                                          # [H, 1, V]
    rows = torch.clamp(last - torch.maximum(first, j) + 1, min=0)              # [H, nqb, V]
    h = torch.arange(vert.shape[0], device=dev)[:, None, None]
    cov = covered(band_table(pattern, m), h, qa[None, :, None], j // B)
    vert_part = (rows * ((vert >= 0)[:, None, :] & ~cov)).sum((1, 2))
    return block_part + vert_part


def causal_entries(n: int, start: int) -> int:
    """Entries of the causal chunk-vs-all-keys rectangle per head."""
    return n * start + n * (n + 1) // 2


def vertical_slash_mask(pattern: VSPattern, n: int, start: int) -> torch.Tensor:
    """The attended set as an explicit [H, n, m] bool mask (references and tests; small sizes)."""
    B, m = pattern.block_size, start + n
    H, dev = pattern.num_heads, pattern.bands.device
    pos = start + torch.arange(n, device=dev)
    keys = torch.arange(m, device=dev)
    h = torch.arange(H, device=dev)[:, None, None]
    blocks = covered(band_table(pattern, m), h, (pos // B)[None, :, None], (keys // B)[None, None, :])
    cols = torch.zeros(H, m + 1, dtype=torch.bool, device=dev)
    cols.scatter_(1, torch.where(pattern.vertical >= 0, pattern.vertical, m), True)
    return (blocks | cols[:, None, :m]) & (keys[None, :] <= pos[:, None])[None]
