"""Vertical-slash sparse attention of one prefill chunk over its keys (attended set: blocks.py):
slash bands as whole key blocks, vertical columns gathered into a compact key set, the two parts
merged by log-sum-exp.

Every path takes an optional restriction to rows [lo, hi) of the chunk and keys [k0, k1): the
attended set intersected with that rectangle. DCA runs one call per part (a key range with its
own query rotation) and merges the parts by log-sum-exp. Rows with nothing to attend in the
rectangle get out 0, lse -inf.

Paths: `triton` (one fused kernel, attention_triton.py; the CUDA default) and `portable` (pure
torch, tiles bounded in memory; the CPU path), both tested against
reference.reference_vertical_slash_attention (float64, an explicit [H, n, m] mask).
"""
from __future__ import annotations

import torch

from turboctx.attention.ops import merge_attention
from turboctx.attention.sparse.blocks import _BIG, band_table, covered, query_blocks, slash_key_blocks
from turboctx.attention.sparse.pattern import VSPattern

_TILE_ELEMS = 1 << 24   # score elements per tile of the portable path


def _restrict(n: int, start: int, rows, keys) -> tuple[int, int, int, int]:
    lo, hi = rows if rows is not None else (0, n)
    k0, k1 = keys if keys is not None else (0, start + n)
    assert 0 <= lo < hi <= n and 0 <= k0 < k1 <= start + n, (rows, keys, n, start)
    return lo, hi, k0, k1


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


def vertical_slash_attention(q, k, v, pattern: VSPattern, *, start: int, scale: float,
                             kernel: str = "auto", rows=None, keys=None):
    """q: [n, H, D]; k, v: [Hkv, m, D] -> out [hi-lo, H, D] (q.dtype), lse [hi-lo, H] fp32.
    kernel: 'triton' (CUDA) | 'portable' | 'auto' (triton on CUDA, else portable)."""
    if kernel == "triton" or (kernel == "auto" and q.device.type == "cuda"):
        from turboctx.attention.sparse.attention_triton import vertical_slash_attention_triton
        return vertical_slash_attention_triton(q, k, v, pattern, start=start, scale=scale,
                                               rows=rows, keys=keys)
    return vertical_slash_attention_portable(q, k, v, pattern, start=start, scale=scale,
                                             rows=rows, keys=keys)
