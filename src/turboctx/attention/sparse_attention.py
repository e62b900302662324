"""Vertical-slash sparse attention of one prefill chunk over all its keys.

The attended set, exactly (what every path here computes and the reference masks):
  query row i of the chunk has position p_i = start + i; keys are 0 .. m-1 (m = start + n);
  B = block_size; query block of row i: i // B; key block of key j: j // B (absolute index).
  Slash blocks: key block kb is selected for (head h, query block qb) iff some diagonal
    d in slash[h] passes through it within qb's rows: kb = (p - d) // B for a row position p of
    qb with p - d >= 0. (A diagonal crossing a B-row block touches at most two key blocks.)
  Entry (i, j) of head h is attended iff j <= p_i and
    (key block j // B is selected for (h, i // B)  or  j is in vertical[h]).
So slash lines are kept as whole blocks (MInference's PIT kernel does the same with 64x64
blocks) and vertical columns token by token, gathered into a compact key set: scattered columns
would otherwise touch a block each. The two parts are disjoint (a column inside a selected block
belongs to the block part) and merge exactly by log-sum-exp.

Paths: `portable` (pure torch, tiles bounded in memory; CPU and CI), `flex` (FlexAttention with a
BlockMask built by `BlockMask.from_kv_blocks`: never an n x m mask), `reference_vertical_slash`
(float64, explicit [H, n, m] mask through attention/reference.py; small sizes only).
"""
from __future__ import annotations

import torch

from turboctx.attention.kernels import merge_attention
from turboctx.attention.reference import reference_attention
from turboctx.attention.sparse_pattern import VSPattern

_TILE_ELEMS = 1 << 24   # score elements per tile of the portable path


def _block_rows(n: int, start: int, B: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last position of each query block: [nqb] int64 each."""
    qb = torch.arange((n + B - 1) // B, device=device)
    first = start + qb * B
    last = start + torch.clamp((qb + 1) * B, max=n) - 1
    return first, last


def slash_block_table(slash: torch.Tensor, n: int, start: int, block_size: int) -> torch.Tensor:
    """slash: [H, S] diagonal offsets (-1 = none) -> sel [H, nqb, nkb] bool (see module doc)."""
    H = slash.shape[0]
    B, m = block_size, start + n
    first, last = _block_rows(n, start, B, slash.device)
    nqb, nkb = first.numel(), (m + B - 1) // B
    d = slash[:, :, None]                                              # [H, S, 1]
    ok = (d >= 0) & (last - d >= 0)                                    # [H, S, nqb]
    base = (torch.arange(H, device=slash.device)[:, None, None] * nqb
            + torch.arange(nqb, device=slash.device)) * (nkb + 1)
    sel = torch.zeros(H * nqb * (nkb + 1), dtype=torch.bool, device=slash.device)
    for edge in (first, last):   # the key blocks of the diagonal at the block's first/last row
        kb = torch.where(ok, torch.clamp(edge - d, min=0) // B, nkb)   # nkb: a dummy column
        sel[(base + kb).flatten()] = True
    return sel.view(H, nqb, nkb + 1)[..., :nkb]


def _tri(y: torch.Tensor) -> torch.Tensor:
    y = torch.clamp(y, min=0)
    return y * (y + 1) // 2


def count_attended(pattern: VSPattern, n: int, start: int, block_size: int,
                   sel: torch.Tensor | None = None) -> torch.Tensor:
    """Number of attended (query, key) entries per head: [H] int64, in closed form."""
    B, m = block_size, start + n
    if sel is None:
        sel = slash_block_table(pattern.slash, n, start, B)
    dev = sel.device
    first, last = _block_rows(n, start, B, dev)                   # [nqb]
    kb0 = torch.arange(sel.shape[2], device=dev) * B               # [nkb]
    width = torch.clamp(m - kb0, max=B)
    # sum over rows p in [first, last] of clamp(p + 1 - kb0, 0, width), via sums of relu
    def relu_sum(x):   # sum_{p=first..last} max(p + 1 - x, 0)
        return _tri(last[:, None] + 1 - x[None, :]) - _tri(first[:, None] - x[None, :])
    c = relu_sum(kb0) - relu_sum(kb0 + width)                      # [nqb, nkb]
    block_part = (sel.to(torch.int64) * c[None]).sum((1, 2))
    vert = pattern.vertical                                        # [H, V]
    ok = vert >= 0
    vc = vert.clamp(min=0)
    rows = torch.clamp(last[None, :, None] - vc[:, None, :] + 1, min=0)       # [H, nqb, V]
    rows = torch.minimum(rows, (last - first + 1)[None, :, None])
    covered = torch.gather(sel, 2, (vc // B)[:, None, :].expand(-1, sel.shape[1], -1))
    vert_part = (rows * (ok[:, None, :] & ~covered)).sum((1, 2))
    return block_part + vert_part


def causal_entries(n: int, start: int) -> int:
    """Entries of the causal chunk-vs-all-keys rectangle per head."""
    return n * start + n * (n + 1) // 2


def vertical_slash_mask(pattern: VSPattern, n: int, start: int, block_size: int) -> torch.Tensor:
    """The attended set as an explicit [H, n, m] bool mask (for references and tests)."""
    B, m = block_size, start + n
    H, dev = pattern.num_heads, pattern.slash.device
    sel = slash_block_table(pattern.slash, n, start, B)
    qb = torch.arange(n, device=dev) // B
    kb = torch.arange(m, device=dev) // B
    blocks = sel[:, qb][:, :, kb]                                   # [H, n, m]
    cols = torch.zeros(H, m + 1, dtype=torch.bool, device=dev)
    cols.scatter_(1, torch.where(pattern.vertical >= 0, pattern.vertical, m), True)
    causal = torch.arange(m, device=dev)[None, :] <= (start + torch.arange(n, device=dev))[:, None]
    return (blocks | cols[:, None, :m]) & causal[None]


def reference_vertical_slash(q, k, v, pattern: VSPattern, *, start: int, block_size: int,
                             scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 reference. q: [n, H, D]; k, v: [Hkv, m, D] -> out [n, H, D], lse [n, H]."""
    mask = vertical_slash_mask(pattern, q.shape[0], start, block_size)
    return reference_attention(q, k.transpose(0, 1), v.transpose(0, 1), mask, scale)


# ---------------------------------------------------------------------------------------------
# Portable path


def _softmax_part(s: torch.Tensor, mask: torch.Tensor, vals: torch.Tensor, eq: str):
    s = s.masked_fill_(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse[..., None]).nan_to_num_(0.0)
    return torch.einsum(eq, p, vals), lse


def _block_part(q, k, v, sel, start, B, scale):
    n, H, D = q.shape
    Hkv, m, _ = k.shape
    nqb, nkb = sel.shape[1:]
    kvh = torch.arange(H, device=q.device) // (H // Hkv)
    pad = nkb * B - m
    kp = torch.nn.functional.pad(k, (0, 0, 0, pad)).view(Hkv, nkb, B, D)
    vp = torch.nn.functional.pad(v, (0, 0, 0, pad)).view(Hkv, nkb, B, D)
    qp = torch.nn.functional.pad(q, (0, 0, 0, 0, 0, nqb * B - n)).view(nqb, B, H, D).permute(2, 0, 1, 3)
    counts = sel.sum(-1)                                                    # [H, nqb]
    order = torch.argsort(sel.to(torch.int8), dim=-1, descending=True, stable=True)
    c = max(int(counts.max()), 1)
    idx, valid = order[..., :c], torch.arange(c, device=q.device) < counts[..., None]   # [H, nqb, c]
    out = torch.empty(H, nqb, B, D, dtype=torch.float32, device=q.device)
    lse = torch.empty(H, nqb, B, dtype=torch.float32, device=q.device)
    tile = max(1, _TILE_ELEMS // (H * B * c * B))
    offs = torch.arange(B, device=q.device)
    for t0 in range(0, nqb, tile):
        t1 = min(nqb, t0 + tile)
        ib = idx[:, t0:t1]                                                  # [H, T, c]
        kg = kp[kvh[:, None, None], ib].flatten(2, 3).float()               # [H, T, c*B, D]
        vg = vp[kvh[:, None, None], ib].flatten(2, 3).float()
        s = torch.einsum("htqd,htkd->htqk", qp[:, t0:t1].float(), kg) * scale
        kpos = (ib[..., None] * B + offs).flatten(2)                        # [H, T, c*B]
        qpos = start + (torch.arange(t0, t1, device=q.device)[:, None] * B + offs)  # [T, B]
        ok = (valid[:, t0:t1, :, None].expand(-1, -1, -1, B).flatten(2))[:, :, None, :] \
            & (kpos[:, :, None, :] <= qpos[None, :, :, None])
        out[:, t0:t1], lse[:, t0:t1] = _softmax_part(s, ok, vg, "htqk,htkd->htqd")
    out = out.permute(1, 2, 0, 3).reshape(nqb * B, H, D)[:n]
    return out, lse.permute(1, 2, 0).reshape(nqb * B, H)[:n]


def _vertical_part(q, k, v, vert, sel, start, B, scale):
    n, H, D = q.shape
    Hkv = k.shape[0]
    kvh = torch.arange(H, device=q.device) // (H // Hkv)
    vc = vert.clamp(min=0)                                                   # [H, V]
    kg, vg = k[kvh[:, None], vc].float(), v[kvh[:, None], vc].float()       # [H, V, D]
    out = torch.empty(n, H, D, dtype=torch.float32, device=q.device)
    lse = torch.empty(n, H, dtype=torch.float32, device=q.device)
    rows = max(1, _TILE_ELEMS // (H * vert.shape[1]))
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        s = torch.einsum("nhd,hvd->hnv", q[r0:r1].float(), kg) * scale      # [H, r, V]
        qi = torch.arange(r0, r1, device=q.device)
        covered = torch.gather(sel[:, qi // B], 2, (vc // B)[:, None, :].expand(-1, r1 - r0, -1))
        ok = (vert >= 0)[:, None, :] & (vert[:, None, :] <= (start + qi)[None, :, None]) & ~covered
        o, l = _softmax_part(s, ok, vg, "hnv,hvd->nhd")
        out[r0:r1], lse[r0:r1] = o, l.transpose(0, 1)
    return out, lse


def vertical_slash_attention_portable(q, k, v, pattern: VSPattern, *, start: int, block_size: int,
                                      scale: float, sel: torch.Tensor | None = None):
    """q: [n, H, D]; k, v: [Hkv, m, D] (m = start + n) -> out [n, H, D] (q.dtype), lse [n, H] fp32."""
    if sel is None:
        sel = slash_block_table(pattern.slash, q.shape[0], start, block_size)
    ob, lb = _block_part(q, k, v, sel, start, block_size, scale)
    ov, lv = _vertical_part(q, k, v, pattern.vertical, sel, start, block_size, scale)
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
        _COMPILED["flex"] = torch.compile(flex_attention)
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


def vertical_slash_attention_flex(q, k, v, pattern: VSPattern, *, start: int, block_size: int,
                                  scale: float, sel: torch.Tensor | None = None,
                                  compiled: bool | None = None):
    """Same contract as the portable path, on FlexAttention (compiled on CUDA).

    Slash part: a BlockMask from `BlockMask.from_kv_blocks` over (n queries, m keys); blocks wholly
    below the causal boundary are "full" (no mask_mod evaluated), the rest are partial. Vertical
    part: the columns gathered per query head into [H, V] keys, every block partial. mask_mod
    encodes the exact set too, because eager (uncompiled) flex_attention ignores block sparsity.
    """
    from torch.nn.attention.flex_attention import BlockMask
    n, H, D = q.shape
    Hkv, m, _ = k.shape
    B, dev = block_size, q.device
    compiled = dev.type == "cuda" if compiled is None else compiled
    kopts = {"BLOCK_M": B, "BLOCK_N": B} if (compiled and dev.type == "cuda" and B < 128) else None
    fn = _flex_fn(compiled)
    if sel is None:
        sel = slash_block_table(pattern.slash, n, start, B)
    nqb, nkb = sel.shape[1:]
    first, _ = _block_rows(n, start, B, dev)
    kb = torch.arange(nkb, device=dev)
    full_vis = ((kb[None, :] + 1) * B - 1 <= first[:, None]) & ((kb[None, :] + 1) * B <= m)
    full, part = sel & full_vis[None], sel & ~full_vis[None]

    def as_blocks(x):   # [H, nqb, nkb] bool -> counts [1, H, nqb], indices [1, H, nqb, nkb] int32
        order = torch.argsort(x.to(torch.int8), dim=-1, descending=True, stable=True)
        return x.sum(-1).to(torch.int32)[None], order.to(torch.int32)[None]

    start_t = torch.tensor(start, device=dev)

    def slash_mask(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx + start_t) & sel[h, q_idx // B, kv_idx // B]

    pn, pi = as_blocks(part)
    fn_, fi = as_blocks(full)
    bm = BlockMask.from_kv_blocks(pn, pi, fn_, fi, BLOCK_SIZE=B, mask_mod=slash_mask, seq_lengths=(n, m))
    q4 = q.transpose(0, 1)[None]
    ob, lb = _flex_call(fn, q4, k[None], v[None], bm, scale, H != Hkv, kopts)

    # vertical columns, padded to whole blocks with -1
    V = pattern.vertical.shape[1]
    Vp = (V + B - 1) // B * B
    vert = torch.nn.functional.pad(pattern.vertical, (0, Vp - V), value=-1)       # [H, Vp]
    vc = vert.clamp(min=0)
    kvh = torch.arange(H, device=dev) // (H // Hkv)
    kg, vg = k[kvh[:, None], vc][None], v[kvh[:, None], vc][None]                 # [1, H, Vp, D]
    vblk = vc // B

    def vert_mask(b, h, q_idx, kv_idx):
        j = vert[h, kv_idx]
        return (j >= 0) & (j <= q_idx + start_t) & ~sel[h, q_idx // B, vblk[h, kv_idx]]

    nvb = Vp // B
    vn = torch.full((1, H, nqb), nvb, dtype=torch.int32, device=dev)
    vi = torch.arange(nvb, dtype=torch.int32, device=dev).expand(1, H, nqb, nvb).contiguous()
    vbm = BlockMask.from_kv_blocks(vn, vi, BLOCK_SIZE=B, mask_mod=vert_mask, seq_lengths=(n, Vp))
    ov, lv = _flex_call(fn, q4, kg, vg, vbm, scale, False, kopts)
    out, lse = merge_attention(ob[0].transpose(0, 1), lb[0].transpose(0, 1).float(),
                               ov[0].transpose(0, 1), lv[0].transpose(0, 1).float())
    return out.to(q.dtype), lse


def vertical_slash_attention(q, k, v, pattern: VSPattern, *, start: int, block_size: int,
                             scale: float, kernel: str = "auto", sel: torch.Tensor | None = None):
    """Dispatch: kernel 'flex' | 'portable' | 'auto' (flex on CUDA, portable elsewhere)."""
    if kernel == "flex" or (kernel == "auto" and q.device.type == "cuda"):
        return vertical_slash_attention_flex(q, k, v, pattern, start=start, block_size=block_size,
                                             scale=scale, sel=sel)
    return vertical_slash_attention_portable(q, k, v, pattern, start=start, block_size=block_size,
                                             scale=scale, sel=sel)
