"""Decode attention with static shapes: split-KV ("flash-decoding") in Triton, for CUDA graphs.

One new query token per sequence attends to that sequence's keys in the cache. Lengths and
offsets are read from device tensors, never Python ints, so one captured graph serves every step:

    seq_lens    [B] int   keys of sequence b (its new token included); 0 = an idle (padding) row
    slot_starts [B] int   the sequence's tokens live at cache slots [start, start + len)

Pass 1 (`_split_kernel`), grid (B, Hkv, S): the program (b, h, s) takes the G query heads that
share kv head h (one tl.dot tile of BLOCK_H >= 16 rows, the extra rows masked) over the s-th of S
equal key segments of sequence b, in blocks of BLOCK_N keys with an online softmax, and writes
its partial output and log-sum-exp to a fixed workspace [B, H, S, D] / [B, H, S] (fp32). The
segment length is ceil(len / S) rounded up to BLOCK_N; trailing segments may be empty (lse -inf).
Pass 2 (`_combine_kernel`), grid (B, H): merges the S partials by log-sum-exp.
`rotary_store_kv` (one launch per layer) rotates q and k and writes the new token's k/v at slot
start + len - 1 (rows with len 0 write nothing).
Dual Chunk Attention runs in the same two launches: the rotary launch writes the three rotations
of the query, and each split program cuts its key segment into the inter, succ and intra ranges
and takes the matching query for each, in one online softmax.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from turboctx.attention.triton_common import multiprocessors, upcast_dot
from turboctx.kv_cache.cache import CacheLayer
from turboctx.kv_cache.fp8 import FP8_MAX, FP8Layer

# Launch settings of the split kernel; tools/sweep_decode_kernel.py sweeps them on the GPU.
BLOCK_N, NUM_WARPS, NUM_STAGES = 64, 4, 2
# The FP8 cache (half the bytes per key): one more pipeline stage keeps more bytes in flight.
FP8_BLOCK_N, FP8_NUM_WARPS, FP8_NUM_STAGES = 64, 4, 3   # swept on the H200
MIN_KEYS_PER_SPLIT = 512   # a split shorter than this costs more in partials than it saves
MAX_SPLITS = 256
_FP8_MAX = tl.constexpr(FP8_MAX)


def num_splits_for(batch: int, num_kv_heads: int, max_len: int, device: torch.device) -> int:
    """Enough programs to fill the GPU (~4 per SM) without splits shorter than MIN_KEYS_PER_SPLIT."""
    sms = multiprocessors(device)
    target = 4 * sms if sms else 32      # only tests run this off CUDA
    by_gpu = -(-target // (batch * num_kv_heads))
    by_len = -(-max_len // MIN_KEYS_PER_SPLIT)
    return max(1, min(MAX_SPLITS, by_gpu, by_len))


@triton.jit
def _attend_range(q, lo, hi, slot0, k_base, v_base, ks_base, vs_base, stride_ks, stride_vs,
                  qk_scale, m_i, l_i, acc, d_mask, offs_n, offs_d, val_ty,
                  BLOCK_N: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                  FP8: tl.constexpr):
    """Online softmax of q [BLOCK_H, BLOCK_D] over the keys [lo, hi) of one sequence: the
    running max m_i and sum l_i [BLOCK_H] and the output acc [BLOCK_H, BLOCK_D] (fp32), updated."""
    for start in range(lo, hi, BLOCK_N):                      # every block has >= 1 valid key
        n = start + offs_n
        n_mask = n < hi
        slots = slot0 + n
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_base + slots[:, None] * stride_ks + offs_d[None, :], mask=kv_mask, other=0.0)
        if FP8:                                               # e4m3 is exact in bf16 / fp32
            k = k.to(val_ty)
        if UPCAST:                                            # see triton_common.upcast_dot
            k = k.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # [BLOCK_H, BLOCK_N]
        if FP8:                                               # q . (k * s_k) = (q . k) * s_k
            s = s * tl.load(ks_base + slots, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        s = tl.where(n_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + slots[:, None] * stride_vs + offs_d[None, :], mask=kv_mask, other=0.0)
        if FP8:                                               # p . (v * s_v) = (p * s_v) . v
            v = v.to(val_ty)
            p = p * tl.load(vs_base + slots, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        p = p.to(v.dtype)
        if UPCAST:
            p, v = p.to(tl.float32), v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=PRECISION)
        m_i = m_new
    return m_i, l_i, acc


@triton.jit
def _split_kernel(q_ptr, k_ptr, v_ptr, ks_ptr, vs_ptr, lens_ptr, starts_ptr, bounds_ptr, po_ptr, pl_ptr,
                  stride_qr, stride_qb, stride_qh, stride_kh, stride_ks, stride_vh, stride_vs,
                  stride_sh, stride_bb, sm_scale, G, D,
                  NUM_SPLITS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                  FP8: tl.constexpr, DCA: tl.constexpr):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    H = G * tl.num_programs(1)
    seq_len = tl.load(lens_ptr + b).to(tl.int64)
    slot0 = tl.load(starts_ptr + b).to(tl.int64)
    split_len = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    lo = split * split_len
    hi = tl.minimum(lo + split_len, seq_len)

    offs_h = tl.arange(0, BLOCK_H)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    heads = kvh * G + offs_h                                  # query heads of this kv head
    h_mask = offs_h < G
    d_mask = offs_d < D
    q_rows = q_ptr + b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + offs_d[None, :]
    q_mask = h_mask[:, None] & d_mask[None, :]
    val_ty = q_ptr.dtype.element_ty
    qk_scale = sm_scale * 1.4426950408889634                  # exp -> exp2
    k_base = k_ptr + kvh.to(tl.int64) * stride_kh
    v_base = v_ptr + kvh.to(tl.int64) * stride_vh
    ks_base = ks_ptr + kvh.to(tl.int64) * stride_sh           # FP8: [Hkv, slots] scales
    vs_base = vs_ptr + kvh.to(tl.int64) * stride_sh

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    if DCA:
        # keys [0, succ_lo) are inter (query rotation 2), [succ_lo, intra_lo) succ (1), the rest
        # intra (0): this split's keys [lo, hi) cut into those three ranges, one query each
        intra_lo = tl.load(bounds_ptr + b).to(tl.int64)
        succ_lo = tl.load(bounds_ptr + stride_bb + b).to(tl.int64)
        for part in tl.static_range(3):
            if part == 0:
                p_lo, p_hi = lo, tl.minimum(hi, succ_lo)
            elif part == 1:
                p_lo, p_hi = tl.maximum(lo, succ_lo), tl.minimum(hi, intra_lo)
            else:
                p_lo, p_hi = tl.maximum(lo, intra_lo), hi
            q = tl.load(q_rows + (2 - part) * stride_qr, mask=q_mask, other=0.0)  # [BLOCK_H, BLOCK_D]
            if UPCAST:
                q = q.to(tl.float32)
            m_i, l_i, acc = _attend_range(q, p_lo, p_hi, slot0,
                                          k_base, v_base, ks_base, vs_base, stride_ks, stride_vs,
                                          qk_scale, m_i, l_i, acc, d_mask, offs_n, offs_d, val_ty,
                                          BLOCK_N, PRECISION, UPCAST, FP8)
    else:
        q = tl.load(q_rows, mask=q_mask, other=0.0)               # [BLOCK_H, BLOCK_D]
        if UPCAST:
            q = q.to(tl.float32)
        m_i, l_i, acc = _attend_range(q, lo, hi, slot0, k_base, v_base, ks_base, vs_base,
                                      stride_ks, stride_vs, qk_scale, m_i, l_i, acc, d_mask,
                                      offs_n, offs_d, val_ty, BLOCK_N, PRECISION, UPCAST, FP8)

    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
    row = (b.to(tl.int64) * H + heads) * NUM_SPLITS + split    # [B, H, S] row index
    tl.store(pl_ptr + row, lse, mask=h_mask)
    tl.store(po_ptr + row[:, None] * D + offs_d[None, :], out, mask=h_mask[:, None] & d_mask[None, :])


@triton.jit
def _combine_kernel(po_ptr, pl_ptr, out_ptr, lse_ptr, stride_ob, stride_oh, D,
                    NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, CHUNK_S: tl.constexpr,
                    BLOCK_D: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    H = tl.num_programs(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    row0 = (b.to(tl.int64) * H + h) * NUM_SPLITS
    lse = tl.load(pl_ptr + row0 + offs_s, mask=offs_s < NUM_SPLITS, other=float("-inf"))
    num_live = tl.sum((lse > float("-inf")).to(tl.int32), 0)   # non-empty splits come first
    m = tl.max(lse, 0)
    m = tl.where(num_live > 0, m, 0.0)
    acc = tl.zeros([BLOCK_D], tl.float32)
    denom = tl.sum(tl.zeros([CHUNK_S], tl.float32), 0)
    offs_c = tl.arange(0, CHUNK_S)
    for s0 in range(0, num_live, CHUNK_S):                    # a few [CHUNK_S, D] tiles at a time
        s = s0 + offs_c
        live = s < num_live
        w = tl.where(live, tl.exp(tl.load(pl_ptr + row0 + s, mask=live, other=0.0) - m), 0.0)
        parts = tl.load(po_ptr + (row0 + s)[:, None] * D + offs_d[None, :],
                        mask=live[:, None] & (offs_d[None, :] < D), other=0.0)
        acc += tl.sum(parts * w[:, None], 0)
        denom += tl.sum(w, 0)
    out = acc / tl.where(num_live > 0, denom, 1.0)
    tl.store(out_ptr + b.to(tl.int64) * stride_ob + h * stride_oh + offs_d,
             out.to(out_ptr.dtype.element_ty), mask=offs_d < D)
    tl.store(lse_ptr + b * H + h,
             tl.where(num_live > 0, m + tl.log(tl.where(num_live > 0, denom, 1.0)), float("-inf")))


def decode_attention(q: torch.Tensor, k_cache: CacheLayer, v_cache: CacheLayer,
                     seq_lens: torch.Tensor, slot_starts: torch.Tensor, scale: float,
                     num_splits: int, block_n: int | None = None,
                     dca_bounds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """q: [B, H, D] (one query per sequence); k_cache, v_cache: [Hkv, slots, D] (one layer; FP8
    cache layers are read with their per-token scales); seq_lens, slot_starts: [B] int32/int64 on
    q's device. Query head h reads kv head h // G.

    Dual Chunk Attention in the same launch: with dca_bounds [2, B] int (intra_lo, succ_lo), q is
    [3, B, H, D], the query rotated for the intra, succ and inter parts (attention/dca.py); keys
    [intra_lo, len) take the first, [succ_lo, intra_lo) the second, [0, succ_lo) the third, all
    in one softmax.

    Returns out [B, H, D] (q.dtype) and lse [B, H] (float32); a row with seq_len 0 gets out 0 and
    lse -inf. Every shape depends on B, H, D and num_splits only: safe inside a CUDA graph.
    """
    k_cache, k_scale, _ = _unpack(k_cache)
    v_cache, v_scale, _ = _unpack(v_cache)
    dca = dca_bounds is not None
    assert q.dim() == (4 if dca else 3) and (not dca or q.shape[0] == 3)
    B, H, D = q.shape[-3:]
    Hkv = k_cache.shape[0]
    G = H // Hkv
    assert H == G * Hkv and k_cache.shape[-1] == D and v_cache.shape == k_cache.shape
    assert q.stride(-1) == 1 and k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1
    assert k_scale is None or (k_scale.stride() == v_scale.stride() and k_scale.stride(-1) == 1)
    assert not dca or (dca_bounds.shape == (2, B) and dca_bounds.stride(-1) == 1)
    fp8 = k_scale is not None
    block_d = max(16, triton.next_power_of_2(D))
    bn, warps, stages = (FP8_BLOCK_N, FP8_NUM_WARPS, FP8_NUM_STAGES) if fp8 else (BLOCK_N, NUM_WARPS, NUM_STAGES)
    block_n = block_n or (bn if block_d <= 128 else bn // 2)
    partial_out = torch.empty(B, H, num_splits, D, dtype=torch.float32, device=q.device)
    partial_lse = torch.empty(B, H, num_splits, dtype=torch.float32, device=q.device)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    upcast = upcast_dot(q.dtype)
    _split_kernel[(B, Hkv, num_splits)](
        q, k_cache, v_cache, k_scale if fp8 else k_cache, v_scale if fp8 else v_cache, seq_lens,
        slot_starts, dca_bounds if dca else seq_lens, partial_out, partial_lse,
        q.stride(0) if dca else 0, q.stride(-3), q.stride(-2), k_cache.stride(0), k_cache.stride(1),
        v_cache.stride(0), v_cache.stride(1), k_scale.stride(0) if fp8 else 0,
        dca_bounds.stride(0) if dca else 0, scale, G, D,
        NUM_SPLITS=num_splits, BLOCK_H=max(16, triton.next_power_of_2(G)), BLOCK_N=block_n,
        BLOCK_D=block_d, PRECISION=precision, UPCAST=upcast, FP8=fp8, DCA=dca, num_warps=warps,
        num_stages=stages)
    out = torch.empty(B, H, D, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, H, dtype=torch.float32, device=q.device)
    _combine_kernel[(B, H)](partial_out, partial_lse, out, lse, out.stride(0), out.stride(1), D,
                            NUM_SPLITS=num_splits, BLOCK_S=triton.next_power_of_2(num_splits),
                            CHUNK_S=min(16, triton.next_power_of_2(num_splits)), BLOCK_D=block_d,
                            num_warps=4)
    return out, lse


@triton.jit
def _round_e4m3(y):
    """y (fp32, |y| <= 448) rounded to the nearest e4m3 value, ties to even, in exact fp32 steps:
    the step of y's binade is 2^(e - 3) (3 mantissa bits), 2^-9 below the normal range. The
    conversion to e4m3 after it is exact on every target (Triton's interpreter rounds otherwise)."""
    a = tl.abs(y)
    e = tl.maximum(((a.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127, -6)
    step = ((e + 124) << 23).to(tl.float32, bitcast=True)             # 2^(e - 3)
    t = a / step + 0.5                                                 # exact: step is 2^k
    f = tl.floor(t)
    odd = (f - 2.0 * tl.floor(f * 0.5)) == 1.0
    r = tl.where((f == t) & odd, f - 1.0, f) * step
    return tl.where(y < 0, -r, r).to(tl.float8e4nv)


@triton.jit
def _round_bf16(x):
    """x (fp32, finite, >= 0) rounded to bf16 (nearest, ties to even), as an fp32 value."""
    bits = x.to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536                 # keep the top 16 bits
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _fp8_store(dst, sdst, x1, x2, mask, static_ptr, HALF, STATIC: tl.constexpr):
    """kv_cache/fp8.py's quantize of one vector [x1 | x2] (fp32 halves): bf16 scale amax / 448
    (or the checkpoint's), e4m3 values x / scale rounded to nearest even."""
    if STATIC:
        sc = _round_bf16(tl.load(static_ptr).to(tl.float32))
    else:
        amax = tl.maximum(tl.max(tl.where(mask, tl.abs(x1), 0.0), 0),
                          tl.max(tl.where(mask, tl.abs(x2), 0.0), 0))
        sc = _round_bf16(tl.where(amax > 0, tl.math.div_rn(amax, _FP8_MAX), 1.0))
    tl.store(sdst, sc.to(tl.bfloat16), mask=tl.max(mask.to(tl.int32), 0) > 0)
    y1 = tl.minimum(tl.maximum(tl.math.div_rn(x1, sc), -_FP8_MAX), _FP8_MAX)
    y2 = tl.minimum(tl.maximum(tl.math.div_rn(x2, sc), -_FP8_MAX), _FP8_MAX)
    tl.store(dst, _round_e4m3(y1), mask=mask)
    tl.store(dst + HALF, _round_e4m3(y2), mask=mask)


@triton.jit
def _rotary_store_kernel(q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, qs_ptr, qo_ptr, kc_ptr, vc_ptr,
                         ks_ptr, vs_ptr, kst_ptr, vst_ptr, lens_ptr, starts_ptr,
                         stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_cr,
                         stride_cb, stride_kch, stride_kcs, stride_vch, stride_vcs, stride_sh, B, H, HALF,
                         BLOCK: tl.constexpr, NUM_ROT: tl.constexpr, QSCALE: tl.constexpr,
                         FP8: tl.constexpr, STATIC: tl.constexpr):
    b = tl.program_id(0)
    j = tl.program_id(1)                     # j < H: query head j; else kv head j - H
    offs = tl.arange(0, BLOCK)
    mask = offs < HALF
    c_row = b.to(tl.int64) * stride_cb
    ty = qo_ptr.dtype.element_ty             # the model's dtype: k is rounded to it, as eager does
    if j < H:
        qsrc = q_ptr + b.to(tl.int64) * stride_qb + j * stride_qh
        x1 = tl.load(qsrc + offs, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(qsrc + HALF + offs, mask=mask, other=0.0).to(tl.float32)
        if QSCALE:                           # q * scale in the model's dtype, as eager does
            sc = tl.load(qs_ptr + b).to(tl.float32)
            x1 = (x1 * sc).to(ty).to(tl.float32)
            x2 = (x2 * sc).to(ty).to(tl.float32)
        for rot in tl.static_range(NUM_ROT):  # one rotated copy per rotary table
            c = cos_ptr + rot * stride_cr + c_row
            sn = sin_ptr + rot * stride_cr + c_row
            cos1 = tl.load(c + offs, mask=mask).to(tl.float32)
            cos2 = tl.load(c + HALF + offs, mask=mask).to(tl.float32)
            sin1 = tl.load(sn + offs, mask=mask).to(tl.float32)
            sin2 = tl.load(sn + HALF + offs, mask=mask).to(tl.float32)
            qdst = qo_ptr + ((rot * B + b).to(tl.int64) * H + j) * (2 * HALF)
            tl.store(qdst + offs, (x1 * cos1 - x2 * sin1).to(ty), mask=mask)
            tl.store(qdst + HALF + offs, (x2 * cos2 + x1 * sin2).to(ty), mask=mask)
    else:
        h = j - H
        cos1 = tl.load(cos_ptr + c_row + offs, mask=mask).to(tl.float32)   # keys: the first table
        cos2 = tl.load(cos_ptr + c_row + HALF + offs, mask=mask).to(tl.float32)
        sin1 = tl.load(sin_ptr + c_row + offs, mask=mask).to(tl.float32)
        sin2 = tl.load(sin_ptr + c_row + HALF + offs, mask=mask).to(tl.float32)
        src = k_ptr + b.to(tl.int64) * stride_kb + h * stride_kh
        seq_len = tl.load(lens_ptr + b).to(tl.int64)
        slot = tl.load(starts_ptr + b).to(tl.int64) + seq_len - 1
        dst = kc_ptr + h.to(tl.int64) * stride_kch + slot * stride_kcs
        mask = offs < tl.where(seq_len > 0, HALF, 0)   # length 0 (graph padding): write nothing
        vsrc = v_ptr + b.to(tl.int64) * stride_vb + h * stride_vh
        vdst = vc_ptr + h.to(tl.int64) * stride_vch + slot * stride_vcs
        v1 = tl.load(vsrc + offs, mask=mask, other=0.0)
        v2 = tl.load(vsrc + HALF + offs, mask=mask, other=0.0)
        x1 = tl.load(src + offs, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(src + HALF + offs, mask=mask, other=0.0).to(tl.float32)
        r1 = (x1 * cos1 - x2 * sin1).to(ty)
        r2 = (x2 * cos2 + x1 * sin2).to(ty)
        if FP8:
            srow = h.to(tl.int64) * stride_sh + slot
            _fp8_store(vdst + offs, vs_ptr + srow, v1.to(tl.float32), v2.to(tl.float32), mask,
                       vst_ptr + h, HALF, STATIC)
            _fp8_store(dst + offs, ks_ptr + srow, r1.to(tl.float32), r2.to(tl.float32), mask,
                       kst_ptr + h, HALF, STATIC)
        else:
            tl.store(vdst + offs, v1, mask=mask)
            tl.store(vdst + HALF + offs, v2, mask=mask)
            tl.store(dst + offs, r1.to(dst.dtype.element_ty), mask=mask)
            tl.store(dst + HALF + offs, r2.to(dst.dtype.element_ty), mask=mask)


def _unpack(cache: CacheLayer) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(values [Hkv, slots, D], FP8 scales [Hkv, slots] or None, static scales [Hkv] or None)."""
    if isinstance(cache, FP8Layer):
        return cache.data, cache.scale, cache.static_scale
    return cache, None, None


def rotary_store_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
                    sin: torch.Tensor, k_cache: CacheLayer, v_cache: CacheLayer,
                    seq_lens: torch.Tensor, slot_starts: torch.Tensor,
                    q_scale: torch.Tensor | None = None) -> torch.Tensor:
    """One launch for what eager decode does in ~12: rotary (rotate-half layout, fp32 math) on
    q: [B, H, D] and k: [B, Hkv, D] with cos/sin: [B, D]; the rotated k and v: [B, Hkv, D] go to
    cache slot start + len - 1 (rows with length 0 write nothing; an FP8 cache layer gets them
    quantized with their scales). Returns the rotated q [B, H, D].

    cos/sin [R, B, D] give R rotations of q, returned as [R, B, H, D]; k takes the first (DCA's
    intra, succ and inter queries). q_scale [B] (q's dtype) multiplies q first (DCA's YaRN scale)."""
    k_cache, k_scale, k_static = _unpack(k_cache)
    v_cache, v_scale, v_static = _unpack(v_cache)
    B, H, D = q.shape
    Hkv = k.shape[1]
    rots = cos.shape[0] if cos.dim() == 3 else 1
    assert D % 2 == 0 and cos.shape[-2:] == (B, D) and sin.stride() == cos.stride()
    assert q_scale is None or q_scale.shape == (B,)
    for t in (q, k, v, cos, k_cache, v_cache):
        assert t.stride(-1) == 1
    fp8, static = k_scale is not None, k_static is not None
    assert not fp8 or (k_scale.stride() == v_scale.stride() and k_scale.stride(-1) == 1)
    q_out = torch.empty(rots, B, H, D, dtype=q.dtype, device=q.device)
    _rotary_store_kernel[(B, H + Hkv)](
        q, k, v, cos, sin, q_scale if q_scale is not None else cos, q_out, k_cache, v_cache,
        k_scale if fp8 else k_cache, v_scale if fp8 else v_cache, k_static if static else cos,
        v_static if static else cos, seq_lens, slot_starts,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        cos.stride(0) if cos.dim() == 3 else 0, cos.stride(-2),
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        k_scale.stride(0) if fp8 else 0, B, H, D // 2,
        BLOCK=triton.next_power_of_2(D // 2), NUM_ROT=rots, QSCALE=q_scale is not None, FP8=fp8,
        STATIC=static, num_warps=1)
    return q_out if cos.dim() == 3 else q_out[0]
