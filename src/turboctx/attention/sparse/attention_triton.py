"""Vertical-slash sparse attention of one prefill chunk as ONE Triton kernel (attended set:
blocks.py; same contract as `vertical_slash_attention_portable` in attention.py).

Algorithm: FlashAttention-2 (Dao, arXiv 2307.08691) forward: one program per (query block, query
head), online softmax in base 2 (scale * log2(e) folded into the scores), fp32 accumulators,
tl.dot on the input dtype, one division at the end. The key set of a program is that of
MInference's `_triton_mixed_sparse_attn_fwd_kernel` (vertical_slash kernel, arXiv 2407.02490):
whole key blocks for the slash part plus vertical columns loaded token by token by index. Here
the two parts are disjoint by construction (a column inside a selected block belongs to the block
part), so one online softmax runs over both: no separate merge.

Program (qb, h), B = pattern.block_size = BLOCK_M rows of absolute query block qa0 + qb (rows of
the chunk front-padded by `pad` dummy rows, as `query_blocks` defines), walks
  1. full key blocks (`kv_block_lists`): in BLOCK_N sub-tiles, no mask at all (hot loop);
  2. partial key blocks: mask k0 <= key < k1 and key <= row position;
  3. vertical columns vertical[h][vbeg:vend] (the range of columns in [k0, k1) that some row of
     the block can see, found by searchsorted in torch): mask causal and not `excluded`, where
     excluded [H, nqb, V] = `covered(band_table(...), h, qa, column // B)` precomputed in torch.
Block geometry lives only in blocks.py (kv_block_lists, covered): the kernel never sees it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from turboctx.attention.sparse.blocks import band_table, covered, kv_block_lists, query_blocks
from turboctx.attention.sparse.pattern import VSPattern
from turboctx.attention.triton_common import upcast_dot

LOG2E = 1.4426950408889634
# CUDA defaults (keyword arguments override). H200, 28/4 heads, D=128, B=128, at 1M keys: BLOCK_N 128
# ran 15% faster than 64; 4 warps half as fast as 8.
BLOCK_N, NUM_WARPS, NUM_STAGES = 128, 8, 3
_NONE = torch.iinfo(torch.int64).max


@triton.jit
def _step(acc, m_i, l_i, q, k, v, ok, qk_scale, MASKED: tl.constexpr,
          PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """One online-softmax step over a [BLOCK_N, D] key/value tile; ok [BLOCK_M, BLOCK_N]."""
    if UPCAST:                     # interpreter: bf16 dot operands go to fp32 (triton_common.py)
        k = k.to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale          # [BM, BN] base 2
    if MASKED:
        s = tl.where(ok, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if MASKED:                     # a row with nothing so far: keep exp2 away from -inf - -inf
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_use = m_new
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    p = p.to(v.dtype)
    if UPCAST:
        p, v = p.to(tl.float32), v.to(tl.float32)
    acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=PRECISION)
    return acc, m_new, l_i


# Integers that change from call to call are not specialized (Triton would otherwise compile a
# variant per combination of "== 1" and "% 16 == 0" over them: DCA's key ranges and odd prompt
# lengths made dozens).
@triton.jit(do_not_specialize=["V", "CP", "CF", "nqb", "start", "lo", "hi", "pad", "k0", "k1",
                               "kb_lo"])
def _vs_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, vert_ptr, excl_ptr, vr_ptr,
               pn_ptr, pi_ptr, fn_ptr, fi_ptr,
               stride_qn, stride_qh, stride_kh, stride_km, stride_vh, stride_vm,
               H, G, D, V, CP, CF, nqb, qk_scale, start, lo, hi, pad, k0, k1, kb_lo,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SUB: tl.constexpr,
               BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, PRECISION: tl.constexpr,
               UPCAST: tl.constexpr):
    qb = nqb - 1 - tl.program_id(0)        # longest (latest) query blocks first
    h = tl.program_id(1)
    kvh = (h // G).to(tl.int64)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    row = lo - pad + qb * BLOCK_M + offs_m                     # [BM] chunk row (dummy if outside)
    row_ok = (row >= lo) & (row < hi)
    pos = start + row                                          # [BM] absolute position
    row64 = row.to(tl.int64)
    q = tl.load(q_ptr + row64[:, None] * stride_qn + h * stride_qh + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)               # [BM, BD]
    if UPCAST:
        q = q.to(tl.float32)
    k_head = k_ptr + kvh * stride_kh
    v_head = v_ptr + kvh * stride_vh
    k_tile = offs_n[:, None] * stride_km + offs_d[None, :]     # [BN, BD] offsets inside a tile
    v_tile = offs_n[:, None] * stride_vm + offs_d[None, :]
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lst = (h * nqb + qb).to(tl.int64)                          # (head, query block) list row

    # 1. full blocks: every key visible to every row, inside [k0, k1): no mask
    for t in range(0, tl.load(fn_ptr + lst) * SUB):
        kb = tl.load(fi_ptr + lst * CF + t // SUB)
        key0 = ((kb + kb_lo) * BLOCK_M + (t % SUB) * BLOCK_N).to(tl.int64)
        if EVEN_D:
            k = tl.load(k_head + key0 * stride_km + k_tile)                    # [BN, BD]
            v = tl.load(v_head + key0 * stride_vm + v_tile)
        else:
            k = tl.load(k_head + key0 * stride_km + k_tile, mask=d_ok[None, :], other=0.0)
            v = tl.load(v_head + key0 * stride_vm + v_tile, mask=d_ok[None, :], other=0.0)
        acc, m_i, l_i = _step(acc, m_i, l_i, q, k, v, 0, qk_scale, False, PRECISION, UPCAST)

    # 2. partial blocks (diagonal, edges of [k0, k1)): causal and range mask
    for t in range(0, tl.load(pn_ptr + lst) * SUB):
        kb = tl.load(pi_ptr + lst * CP + t // SUB)
        key0 = (kb + kb_lo) * BLOCK_M + (t % SUB) * BLOCK_N
        key = key0 + offs_n                                                     # [BN]
        key_ok = (key >= k0) & (key < k1)
        kv_ok = key_ok[:, None] & d_ok[None, :]
        k = tl.load(k_head + key0.to(tl.int64) * stride_km + k_tile, mask=kv_ok, other=0.0)
        v = tl.load(v_head + key0.to(tl.int64) * stride_vm + v_tile, mask=kv_ok, other=0.0)
        ok = key_ok[None, :] & (key[None, :] <= pos[:, None])
        acc, m_i, l_i = _step(acc, m_i, l_i, q, k, v, ok, qk_scale, True, PRECISION, UPCAST)

    # 3. vertical columns vert[h, vbeg:vend], gathered by index
    vbeg = tl.load(vr_ptr + lst * 2)
    vend = tl.load(vr_ptr + lst * 2 + 1)
    for j0 in range(vbeg, vend, BLOCK_N):
        j = j0 + offs_n                                                         # [BN]
        col = tl.load(vert_ptr + h * V + j, mask=j < vend, other=0)             # [BN] int64
        ex = tl.load(excl_ptr + lst * V + j, mask=j < vend, other=1)
        c_ok = (j < vend) & (ex == 0)
        kv_ok = c_ok[:, None] & d_ok[None, :]
        k = tl.load(k_head + col[:, None] * stride_km + offs_d[None, :], mask=kv_ok, other=0.0)
        v = tl.load(v_head + col[:, None] * stride_vm + offs_d[None, :], mask=kv_ok, other=0.0)
        ok = c_ok[None, :] & (col[None, :] <= pos[:, None])
        acc, m_i, l_i = _step(acc, m_i, l_i, q, k, v, ok, qk_scale, True, PRECISION, UPCAST)

    empty = l_i == 0.0                                         # nothing attended: out 0, lse -inf
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453   # log2 -> ln
    lse = tl.where(empty, float("-inf"), lse)
    orow = row64 - lo                                          # [BM] output row
    tl.store(o_ptr + (orow[:, None] * H + h) * D + offs_d[None, :],
             out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    tl.store(lse_ptr + orow * H + h, lse, mask=row_ok)


def vertical_slash_attention_triton(q, k, v, pattern: VSPattern, *, start: int, scale: float,
                                    rows=None, keys=None, block_n: int | None = None,
                                    num_warps: int | None = None, num_stages: int | None = None):
    """q: [n, H, D]; k, v: [Hkv, m, D] (m = start + n, stride(2) == 1) -> out [hi-lo, H, D]
    (q.dtype), lse [hi-lo, H] float32 (natural log; -inf and out 0 where nothing is attended)."""
    n, H, D = q.shape
    Hkv, m, _ = k.shape
    lo, hi = rows if rows is not None else (0, n)
    k0, k1 = keys if keys is not None else (0, start + n)
    assert 0 <= lo < hi <= n and 0 <= k0 < k1 <= start + n <= m, (rows, keys, n, start, m)
    assert H % Hkv == 0 and v.shape[:2] == k.shape[:2] and k.stride(2) == 1 and v.stride(2) == 1
    if q.stride(2) != 1:
        q = q.contiguous()
    B, dev = pattern.block_size, q.device
    BN = block_n or min(BLOCK_N, B)
    assert B % BN == 0 and BN >= 16 and B >= 16, (B, BN)
    BD = triton.next_power_of_2(D)
    qa0, nqb, pad = query_blocks(start, lo, hi, B)

    # slash part: key-block lists [1, H, nqb, C] int32, relative to k0 // B
    pn, pi, fn, fi = (x.contiguous() for x in kv_block_lists(pattern, start, lo, hi, k0, k1))

    # vertical part: columns [H, V] (ascending, -1 padded), excluded [H, nqb, V], range [H, nqb, 2]
    vert = pattern.vertical
    if vert.shape[1] == 0:
        vert = torch.full((H, 1), -1, dtype=torch.int64, device=dev)
    vert = vert.to(device=dev, dtype=torch.int64).contiguous()                # [H, V]
    V = vert.shape[1]
    qa = torch.arange(qa0, qa0 + nqb, device=dev)                              # [nqb]
    heads = torch.arange(H, device=dev)[:, None, None]
    excl = covered(band_table(pattern, m), heads, qa[None, :, None],
                   (vert.clamp(min=0) // B)[:, None, :])                       # [H, nqb, V] bool
    excl = excl.to(torch.int8).contiguous()
    vs = torch.where(vert >= 0, vert, _NONE).contiguous()                      # [H, V] sorted
    vbeg = torch.searchsorted(vs, torch.full((H, 1), k0, dtype=torch.int64, device=dev))
    last = torch.clamp(qa * B + B - 1, max=k1 - 1).expand(H, nqb).contiguous()  # [H, nqb]
    vend = torch.searchsorted(vs, last, right=True)                            # [H, nqb]
    vr = torch.stack((vbeg.expand(H, nqb), torch.maximum(vend, vbeg)), -1)
    vr = vr.to(torch.int32).contiguous()                                        # [H, nqb, 2]

    out = torch.empty(hi - lo, H, D, dtype=q.dtype, device=dev)               # [hi-lo, H, D]
    lse = torch.empty(hi - lo, H, dtype=torch.float32, device=dev)            # [hi-lo, H]
    up = upcast_dot(q.dtype)
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    opts = dict(num_warps=num_warps or NUM_WARPS, num_stages=num_stages or NUM_STAGES)
    _vs_kernel[(nqb, H)](
        q, k, v, out, lse, vert, excl, vr, pn, pi, fn, fi,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        H, H // Hkv, D, V, pi.shape[-1], fi.shape[-1], nqb, scale * LOG2E, start, lo, hi, pad,
        k0, k1, k0 // B, BLOCK_M=B, BLOCK_N=BN, SUB=B // BN, BLOCK_D=BD, EVEN_D=BD == D,
        PRECISION=prec, UPCAST=up, **opts)
    return out, lse
