"""Fused vertical-slash scores in Triton: the last L queries of a chunk against every key, never
materializing the [H, L, m] probabilities (reference.py has the torch reference).

Pass 1 (`_lse_kernel`), grid (H, S): program (h, s) runs query head h's L queries (one tl.dot
tile) over the s-th key split with an online max / sum-of-exp; the S partials are merged by
log-sum-exp in torch -> lse [H, L] (base 2).
Pass 2 (`_score_kernel`), grid (H, T): program (h, t) walks its run of BLOCK_N-key tiles,
recomputes p = exp2(s - lse) with the causal mask, stores the column sums (vertical scores,
[H, m] float32: each column written by exactly one program) and adds each tile's sums over the
<= NBT query blocks of the L queries into the block diagonals t = qa - kb of band [H, nb] with
atomics (a tile of BLOCK_N <= B keys lies in one key block kb): the tile's row sums once, then
each query block's share of them.
Heads vary fastest in both grids, so the G query heads sharing a kv head run side by side and
read the same keys through L2.
Cost at 1M keys, 28 heads, L = 64, D = 128: 2 x 0.46 TFLOP of tl.dot and 2 x 1.9e9 exp2.

DCA segments (pattern.Segment): each launch covers one key range with its own rotated
queries; pass 1 merges the partials of every segment, pass 2 runs once per segment.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from turboctx.attention.sparse.pattern import as_segments, num_bands
from turboctx.attention.triton_common import multiprocessors, upcast_dot

LOG2E = 1.4426950408889634
# H200, 64 queries x 1M keys x 28 heads (measured with the launch settings swept): BN=64, 4 warps,
# 2 stages 6.4 ms; BN=128, 8 warps, 2 stages 12.7 ms.
BLOCK_N, NUM_WARPS, NUM_STAGES = 64, 4, 2


# Positions and ranges change every call: not specialized (no recompiles per "% 16" pattern).
@triton.jit(do_not_specialize=["q_pos0", "L", "k_lo", "k_hi", "split_len"])
def _lse_kernel(q_ptr, k_ptr, part_ptr, stride_ql, stride_qh, stride_kh, stride_km,
                qk_scale, q_pos0, L, k_lo, k_hi, split_len, G, D,
                BLOCK_L: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    h = tl.program_id(0)
    s = tl.program_id(1)
    S = tl.num_programs(1)
    kvh = (h // G).to(tl.int64)
    offs_l = tl.arange(0, BLOCK_L)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q = tl.load(q_ptr + offs_l[:, None] * stride_ql + h * stride_qh + offs_d[None, :],
                mask=(offs_l[:, None] < L) & d_ok[None, :], other=0.0)          # [BL, BD]
    if UPCAST:
        q = q.to(tl.float32)
    qpos = q_pos0 + offs_l
    lo = k_lo + s * split_len
    hi = tl.minimum(lo + split_len, k_hi)
    m_i = tl.full([BLOCK_L], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_L], tl.float32)
    k_base = k_ptr + kvh * stride_kh
    for n0 in range(lo, hi, BLOCK_N):
        kk = n0 + offs_n
        kt = tl.load(k_base + kk[None, :].to(tl.int64) * stride_km + offs_d[:, None],
                     mask=(kk[None, :] < hi) & d_ok[:, None], other=0.0)       # [BD, BN]
        if UPCAST:
            kt = kt.to(tl.float32)
        x = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
        ok = (kk[None, :] < hi) & (kk[None, :] <= qpos[:, None])
        x = tl.where(ok, x, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(x, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.exp2(m_i - m_safe) + tl.sum(tl.exp2(x - m_safe[:, None]), 1)
        m_i = m_new
    base = part_ptr + (h * S + s) * 2 * BLOCK_L
    tl.store(base + offs_l, m_i)
    tl.store(base + BLOCK_L + offs_l, l_i)


@triton.jit(do_not_specialize=["q_pos0", "L", "k_lo", "k_hi", "m", "nb", "tiles_per_prog"])
def _score_kernel(q_ptr, k_ptr, lse_ptr, vert_ptr, band_ptr,
                  stride_ql, stride_qh, stride_kh, stride_km,
                  qk_scale, q_pos0, L, k_lo, k_hi, m, nb, tiles_per_prog, G, D,
                  BAND: tl.constexpr, NBT: tl.constexpr, BLOCK_L: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
                  UPCAST: tl.constexpr):
    h = tl.program_id(0)
    t = tl.program_id(1)
    kvh = (h // G).to(tl.int64)
    offs_l = tl.arange(0, BLOCK_L)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    l_ok = offs_l < L
    q = tl.load(q_ptr + offs_l[:, None] * stride_ql + h * stride_qh + offs_d[None, :],
                mask=l_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    lse = tl.load(lse_ptr + h * BLOCK_L + offs_l)                               # base 2
    qpos = q_pos0 + offs_l
    qa0 = q_pos0 // BAND
    first = k_lo // BLOCK_N + t * tiles_per_prog
    last = tl.minimum(first + tiles_per_prog, tl.cdiv(k_hi, BLOCK_N))
    k_base = k_ptr + kvh * stride_kh
    vrow = vert_ptr + h.to(tl.int64) * m
    brow = band_ptr + h * nb
    for tile in range(first, last):
        n0 = tile * BLOCK_N
        kk = n0 + offs_n
        in_r = (kk >= k_lo) & (kk < k_hi)
        kt = tl.load(k_base + kk[None, :].to(tl.int64) * stride_km + offs_d[:, None],
                     mask=in_r[None, :] & d_ok[:, None], other=0.0)
        if UPCAST:
            kt = kt.to(tl.float32)
        x = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
        ok = in_r[None, :] & (kk[None, :] <= qpos[:, None]) & l_ok[:, None]
        p = tl.where(ok, tl.exp2(x - lse[:, None]), 0.0)                       # [BL, BN]
        tl.store(vrow + kk, tl.sum(p, 0), mask=in_r)
        kb = n0 // BAND
        rel = qpos // BAND - qa0                                                # [BL] 0 .. NBT-1
        row_sums = tl.sum(p, 1)                                                 # [BL], once
        for j in tl.static_range(NBT):
            c = tl.sum(tl.where(rel == j, row_sums, 0.0), 0)   # the rows of query block j
            t = qa0 + j - kb
            tl.atomic_add(brow + t, c, mask=(t >= 0) & (t < nb))


def _programs(device: torch.device) -> int:
    sms = multiprocessors(device)
    return 4 * sms if sms else 16          # off CUDA only tests run this (the interpreter)


def vertical_slash_scores_triton(q_last, k: torch.Tensor, q_pos0: int, *, scale: float,
                                 block_size: int, block_n: int | None = None,
                                 num_warps: int | None = None, num_stages: int | None = None
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as reference.reference_vertical_slash_scores: vert [H, m], band [H, nb]."""
    Hkv, m, D = k.shape
    segs = as_segments(q_last, m)
    L, H, _ = segs[0][2].shape
    assert k.stride(2) == 1 and L <= 128 and q_pos0 + L <= m
    G, B, nb = H // Hkv, block_size, num_bands(m, block_size)
    BN = block_n or min(BLOCK_N, max(16, B))
    assert B % BN == 0, f"block_n={BN} must divide the block size {B}"
    BL, BD = max(16, triton.next_power_of_2(L)), triton.next_power_of_2(D)
    nbt = (q_pos0 + BL - 1) // B - q_pos0 // B + 1     # query blocks of the (padded) rows
    opts = dict(num_warps=num_warps or NUM_WARPS, num_stages=num_stages or NUM_STAGES)
    qk = scale * LOG2E
    up = upcast_dot(k.dtype)
    prec = "ieee" if k.dtype == torch.float32 else "tf32"   # fp32 in, fp32 products (as torch)
    dev = k.device
    per_head = max(1, _programs(dev) // H)
    parts = []
    for lo, hi, q in segs:
        if hi <= lo:
            continue
        assert q.stride(2) == 1
        split = triton.cdiv(triton.cdiv(hi - lo, per_head), BN) * BN
        S = triton.cdiv(hi - lo, split)
        part = torch.empty(H, S, 2, BL, dtype=torch.float32, device=dev)
        _lse_kernel[(H, S)](q, k, part, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                            qk, q_pos0, L, lo, hi, split, G, D, BLOCK_L=BL, BLOCK_N=BN,
                            BLOCK_D=BD, PRECISION=prec, UPCAST=up, **opts)
        parts.append(part)
    part = torch.cat(parts, 1)                                               # [H, S', 2, BL]
    mx, sm = part[:, :, 0], part[:, :, 1]
    top = mx.max(1, keepdim=True).values
    top = torch.where(torch.isinf(top), 0.0, top)
    lse = (top[:, 0] + torch.log2((sm * torch.exp2(mx - top)).sum(1))).contiguous()   # [H, BL]
    vert = torch.empty(H, m, dtype=torch.float32, device=dev)
    band = torch.zeros(H, nb, dtype=torch.float32, device=dev)
    for lo, hi, q in segs:
        if hi <= lo:
            continue
        tiles = triton.cdiv(hi, BN) - lo // BN
        tpp = triton.cdiv(tiles, per_head)
        _score_kernel[(H, triton.cdiv(tiles, tpp))](
            q, k, lse, vert, band, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            qk, q_pos0, L, lo, hi, m, nb, tpp, G, D, BAND=B, NBT=nbt, BLOCK_L=BL,
            BLOCK_N=BN, BLOCK_D=BD, PRECISION=prec, UPCAST=up, **opts)
    return vert, band


def flops(L: int, H: int, m: int, D: int) -> float:
    """tl.dot FLOPs of both passes (for achieved-rate reports)."""
    return 2 * 2.0 * L * H * m * D

