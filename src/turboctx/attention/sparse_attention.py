"""Vertical-slash sparse attention of one prefill chunk over its keys (attended set:
sparse_blocks.py): slash bands as whole key blocks, vertical columns gathered into a compact key
set, the two parts merged by log-sum-exp.

Every path takes an optional restriction to rows [lo, hi) of the chunk and keys [k0, k1): the
attended set intersected with that rectangle. DCA runs one call per part (a key range with its
own query rotation) and merges the parts by log-sum-exp. Rows with nothing to attend in the
rectangle get out 0, lse -inf.

Paths: `triton` (one fused kernel, sparse_triton.py; the CUDA default), `portable` (pure torch,
tiles bounded in memory; CPU and CI), `flex` (FlexAttention with BlockMasks from
`BlockMask.from_kv_blocks`: never an n x m mask nor an [H, nqb, nkb] table),
`reference_vertical_slash` (float64, explicit [H, n, m] mask through attention/reference.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from turboctx.attention.kernels import merge_attention
from turboctx.attention.reference import reference_attention
from turboctx.attention.sparse_blocks import (_BIG, band_table, covered, kv_block_lists,
                                              query_blocks, slash_key_blocks, vertical_slash_mask)
from turboctx.attention.sparse_pattern import VSPattern

_TILE_ELEMS = 1 << 24   # score elements per tile of the portable path


def reference_vertical_slash(q, k, v, pattern: VSPattern, *, start: int,
                             scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 reference. q: [n, H, D]; k, v: [Hkv, m, D] -> out [n, H, D], lse [n, H]."""
    mask = vertical_slash_mask(pattern, q.shape[0], start)
    return reference_attention(q, k.transpose(0, 1), v.transpose(0, 1), mask, scale)


def _restrict(n: int, start: int, rows, keys) -> tuple[int, int, int, int]:
    lo, hi = rows if rows is not None else (0, n)
    k0, k1 = keys if keys is not None else (0, start + n)
    assert 0 <= lo < hi <= n and 0 <= k0 < k1 <= start + n, (rows, keys, n, start)
    return lo, hi, k0, k1


# ---------------------------------------------------------------------------------------------
# Portable path


def _softmax_part(s: torch.Tensor, mask: torch.Tensor, vals: torch.Tensor, eq: str):
    s = s.masked_fill_(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse[..., None]).nan_to_num_(0.0)
    return torch.einsum(eq, p, vals), lse


def _block_part(q, k, v, pattern, start, lo, hi, k0, k1, scale):
    """Slash blocks of rows [lo, hi) over keys [k0, k1) -> out [hi-lo, H, D] fp32, lse [hi-lo, H]."""
    _, H, D = q.shape
    Hkv, m, _ = k.shape
    B, dev = pattern.block_size, q.device
    qa0, nqb, pad = query_blocks(start, lo, hi, B)
    qa = torch.arange(qa0, qa0 + nqb, device=dev)
    kb_hi = (k1 + B - 1) // B
    x = slash_key_blocks(pattern.bands, qa, k0 // B, kb_hi)                  # [H, nqb, C]
    c = max(int((x < _BIG).sum(-1).max()), 1)
    x = x[..., :c]
    valid, idx = x < _BIG, torch.where(x < _BIG, x, 0)
    kvh = torch.arange(H, device=dev) // (H // Hkv)
    kp = torch.nn.functional.pad(k[:, :k1], (0, 0, 0, kb_hi * B - k1)).view(Hkv, kb_hi, B, D)
    vp = torch.nn.functional.pad(v[:, :k1], (0, 0, 0, kb_hi * B - k1)).view(Hkv, kb_hi, B, D)
    qp = torch.nn.functional.pad(q[lo:hi], (0, 0, 0, 0, pad, nqb * B - pad - (hi - lo)))
    qp = qp.view(nqb, B, H, D).permute(2, 0, 1, 3)                            # [H, nqb, B, D]
    out = torch.empty(H, nqb, B, D, dtype=torch.float32, device=dev)
    lse = torch.empty(H, nqb, B, dtype=torch.float32, device=dev)
    tile = max(1, _TILE_ELEMS // (H * B * c * B))
    offs = torch.arange(B, device=dev)
    for t0 in range(0, nqb, tile):
        t1 = min(nqb, t0 + tile)
        ib = idx[:, t0:t1]                                                  # [H, T, c]
        kg = kp[kvh[:, None, None], ib].flatten(2, 3).float()               # [H, T, c*B, D]
        vg = vp[kvh[:, None, None], ib].flatten(2, 3).float()
        s = torch.einsum("htqd,htkd->htqk", qp[:, t0:t1].float(), kg) * scale
        kpos = (ib[..., None] * B + offs).flatten(2)                        # [H, T, c*B]
        qpos = qa[t0:t1, None] * B + offs                                   # [T, B]
        kok = valid[:, t0:t1, :, None].expand(-1, -1, -1, B).flatten(2) & (kpos >= k0) & (kpos < k1)
        ok = kok[:, :, None, :] & (kpos[:, :, None, :] <= qpos[None, :, :, None])
        out[:, t0:t1], lse[:, t0:t1] = _softmax_part(s, ok, vg, "htqk,htkd->htqd")
    out = out.permute(1, 2, 0, 3).reshape(nqb * B, H, D)[pad:pad + hi - lo]
    return out, lse.permute(1, 2, 0).reshape(nqb * B, H)[pad:pad + hi - lo]


def _vertical_part(q, k, v, pattern, start, lo, hi, k0, k1, scale):
    _, H, D = q.shape
    Hkv = k.shape[0]
    B, dev, vert = pattern.block_size, q.device, pattern.vertical
    kvh = torch.arange(H, device=dev) // (H // Hkv)
    vc = vert.clamp(min=0)                                                   # [H, V]
    kg, vg = k[kvh[:, None], vc].float(), v[kvh[:, None], vc].float()       # [H, V, D]
    bt = band_table(pattern, k.shape[1])
    heads = torch.arange(H, device=dev)[:, None, None]
    n = hi - lo
    out = torch.empty(n, H, D, dtype=torch.float32, device=dev)
    lse = torch.empty(n, H, dtype=torch.float32, device=dev)
    rows = max(1, _TILE_ELEMS // (H * max(1, vert.shape[1])))
    ok_col = (vert >= k0) & (vert < k1)                                      # -1 pads fail k0 >= 0
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        s = torch.einsum("nhd,hvd->hnv", q[lo + r0:lo + r1].float(), kg) * scale   # [H, r, V]
        pos = start + lo + torch.arange(r0, r1, device=dev)
        cov = covered(bt, heads, (pos // B)[None, :, None], (vc // B)[:, None, :])
        ok = ok_col[:, None, :] & (vert[:, None, :] <= pos[None, :, None]) & ~cov
        o, l = _softmax_part(s, ok, vg, "hnv,hvd->nhd")
        out[r0:r1], lse[r0:r1] = o, l.transpose(0, 1)
    return out, lse


def vertical_slash_attention_portable(q, k, v, pattern: VSPattern, *, start: int, scale: float,
                                      rows=None, keys=None):
    """q: [n, H, D]; k, v: [Hkv, m, D] (m = start + n) -> out [hi-lo, H, D] (q.dtype), lse fp32."""
    lo, hi, k0, k1 = _restrict(q.shape[0], start, rows, keys)
    ob, lb = _block_part(q, k, v, pattern, start, lo, hi, k0, k1, scale)
    ov, lv = _vertical_part(q, k, v, pattern, start, lo, hi, k0, k1, scale)
    out, lse = merge_attention(ob, lb, ov, lv)
    return out.to(q.dtype), lse


# ---------------------------------------------------------------------------------------------
# FlexAttention path

_COMPILED = {}


def _flex_fn(compiled: bool):
    from torch.nn.attention.flex_attention import flex_attention
    if not compiled:
        return flex_attention
    if "flex" not in _COMPILED:
        _COMPILED["flex"] = torch.compile(flex_attention, dynamic=True)
    return _COMPILED["flex"]


def _flex_call(fn, q4, k4, v4, block_mask, scale, gqa, kernel_options):
    try:
        from torch.nn.attention.flex_attention import AuxRequest
        out, aux = fn(q4, k4, v4, block_mask=block_mask, scale=scale, enable_gqa=gqa,
                      return_aux=AuxRequest(lse=True), kernel_options=kernel_options)
        return out, aux.lse
    except ImportError:
        return fn(q4, k4, v4, block_mask=block_mask, scale=scale, enable_gqa=gqa,
                  return_lse=True, kernel_options=kernel_options)


def _block_mask(kv_num, kv_idx, full_num, full_idx, B, mask_mod, seq_lengths):
    from torch.nn.attention.flex_attention import BlockMask
    try:
        return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=B,
                                        mask_mod=mask_mod, seq_lengths=seq_lengths,
                                        compute_q_blocks=False)   # inference: no backward tables
    except TypeError:
        return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=B,
                                        mask_mod=mask_mod, seq_lengths=seq_lengths)


def vertical_slash_attention_flex(q, k, v, pattern: VSPattern, *, start: int, scale: float,
                                  rows=None, keys=None, compiled: bool | None = None):
    """Same contract as the portable path, on FlexAttention (compiled on CUDA).

    Rows are front-padded to the absolute block boundary (no copy when aligned, as in the engine),
    keys are the view from block k0 // B. Slash part: key blocks strictly below the diagonal and
    inside [k0, k1) are "full" (no mask_mod evaluated); the diagonal and edge blocks are partial.
    Vertical part: the columns gathered per query head into [H, Vp] keys, every block partial.
    Two calls (inputs from `flex_inputs`), merged by log-sum-exp.
    """
    B, dev = pattern.block_size, q.device
    compiled = dev.type == "cuda" if compiled is None else compiled
    kopts = {"BLOCK_M": B, "BLOCK_N": B} if (compiled and dev.type == "cuda" and B < 128) else None
    fn = _flex_fn(compiled)
    f = flex_inputs(q, k, v, pattern, start=start, rows=rows, keys=keys)
    ob, lb = _flex_call(fn, f.q4, *f.slash_kv, f.slash_mask, scale, q.shape[1] != k.shape[0], kopts)
    ov, lv = _flex_call(fn, f.q4, *f.vert_kv, f.vert_mask, scale, False, kopts)
    sl = f.rows
    out, lse = merge_attention(ob[0, :, sl].transpose(0, 1), lb[0, :, sl].transpose(0, 1).float(),
                               ov[0, :, sl].transpose(0, 1), lv[0, :, sl].transpose(0, 1).float())
    return out.to(q.dtype), lse


@dataclass
class FlexInputs:
    """What the two FlexAttention calls of one chunk take (see flex_inputs)."""
    q4: torch.Tensor              # [1, H, nq, D] rows, front-padded to the block boundary
    slash_kv: tuple               # ([1, Hkv, keys, D], same) the key view from block k0 // B
    slash_mask: object            # BlockMask over it
    vert_kv: tuple                # ([1, H, Vp, D], same) vertical columns gathered per query head
    vert_mask: object             # BlockMask over them
    rows: slice                   # the real rows of q4's third axis


def flex_inputs(q, k, v, pattern: VSPattern, *, start: int, rows=None, keys=None) -> FlexInputs:
    """Query view, key views and BlockMasks of both parts (the set of sparse_blocks.py restricted
    to rows x keys). Offsets reach the mask_mods as tensors, so a compiled kernel serves every
    chunk; the mask_mods encode the whole set too, because eager flex_attention ignores block lists."""
    n, H, D = q.shape
    Hkv, m, _ = k.shape
    lo, hi, k0, k1 = _restrict(n, start, rows, keys)
    B, dev = pattern.block_size, q.device
    qa0, nqb, pad = query_blocks(start, lo, hi, B)
    kb_lo = k0 // B
    pn, pi, fn_, fi = kv_block_lists(pattern, start, lo, hi, k0, k1)
    bt = band_table(pattern, m)
    scalar = lambda x: torch.full((), x, dtype=torch.int64, device=dev)   # noqa: E731 (no H2D copy)
    q_base = scalar(qa0 * B)                             # absolute position of padded row 0
    k_base = scalar(kb_lo * B)                           # absolute index of view key 0
    k_lo, k_hi = scalar(k0), scalar(k1)

    def slash_mask(b, h, q_idx, kv_idx):
        p, j = q_idx + q_base, kv_idx + k_base
        return (j <= p) & (j >= k_lo) & covered(bt, h, p // B, j // B)

    rows_q = q[lo:hi]
    if pad:
        rows_q = torch.nn.functional.pad(rows_q, (0, 0, 0, 0, pad, 0))
    nq = rows_q.shape[0]
    bm = _block_mask(pn, pi, fn_, fi, B, slash_mask, (nq, k1 - kb_lo * B))

    # vertical columns, padded to whole blocks with -1
    V = pattern.vertical.shape[1]
    Vp = max(1, (V + B - 1) // B) * B
    vert = torch.nn.functional.pad(pattern.vertical, (0, Vp - V), value=-1)    # [H, Vp]
    vc = vert.clamp(min=0)
    kvh = torch.arange(H, device=dev) // (H // Hkv)
    vblk = vc // B

    def vert_mask(b, h, q_idx, kv_idx):
        p, j = q_idx + q_base, vert[h, kv_idx]
        return (j >= k_lo) & (j < k_hi) & (j <= p) & ~covered(bt, h, p // B, vblk[h, kv_idx])

    nvb = Vp // B
    vn = torch.full((1, H, nqb), nvb, dtype=torch.int32, device=dev)
    vi = torch.arange(nvb, dtype=torch.int32, device=dev).expand(1, H, nqb, nvb).contiguous()
    return FlexInputs(
        q4=rows_q.transpose(0, 1)[None],
        slash_kv=(k[None, :, kb_lo * B:k1], v[None, :, kb_lo * B:k1]), slash_mask=bm,
        vert_kv=(k[kvh[:, None], vc][None], v[kvh[:, None], vc][None]),          # [1, H, Vp, D]
        vert_mask=_block_mask(vn, vi, None, None, B, vert_mask, (nq, Vp)),
        rows=slice(pad, pad + hi - lo))


def vertical_slash_attention(q, k, v, pattern: VSPattern, *, start: int, scale: float,
                             kernel: str = "auto", rows=None, keys=None):
    """Dispatch: kernel 'triton' | 'flex' | 'portable' | 'auto' (triton on CUDA, else portable)."""
    if kernel == "triton" or (kernel == "auto" and q.device.type == "cuda"):
        from turboctx.attention.sparse_triton import vertical_slash_attention_triton
        return vertical_slash_attention_triton(q, k, v, pattern, start=start, scale=scale,
                                               rows=rows, keys=keys)
    if kernel == "flex":
        return vertical_slash_attention_flex(q, k, v, pattern, start=start, scale=scale,
                                             rows=rows, keys=keys)
    return vertical_slash_attention_portable(q, k, v, pattern, start=start, scale=scale,
                                             rows=rows, keys=keys)
