"""The one-kernel Triton vertical-slash attention (sparse_triton.py) against the portable path and
the float64 reference on the same attended set (sparse_blocks.py). Without CUDA the kernel runs
in Triton's CPU interpreter (tiny shapes); the compiled kernel runs in the gpu-marked test."""
from __future__ import annotations

import os

import pytest
import torch

INTERPRET = not torch.cuda.is_available()
if INTERPRET:
    os.environ["TRITON_INTERPRET"] = "1"      # before triton.jit runs: decoration reads it
triton = pytest.importorskip("triton")

from turboctx.attention.reference import reference_attention  # noqa: E402
from turboctx.attention.sparse.attention import vertical_slash_attention_portable  # noqa: E402
from turboctx.attention.sparse.blocks import (band_table, covered, query_blocks,  # noqa: E402
                                              vertical_slash_mask)
from turboctx.attention.sparse.pattern import VSPattern, select_vertical_slash  # noqa: E402
from turboctx.attention.sparse.reference import reference_vertical_slash_attention  # noqa: E402
from turboctx.attention.sparse.attention_triton import vertical_slash_attention_triton  # noqa: E402

DEV = "cpu" if INTERPRET else "cuda"


def _qkv(n, start, H, Hkv, D, dtype, seed=0, device=DEV):
    """q [n, H, D]; k, v [Hkv, m, D] as strided views of a larger cache (m = start + n)."""
    g = torch.Generator().manual_seed(seed)
    m = start + n
    q = torch.randn(n, H, D, generator=g).to(device, dtype)
    k = torch.randn(Hkv, m + 5, D, generator=g).to(device, dtype)[:, 2:m + 2]
    v = torch.randn(Hkv, m + 5, D, generator=g).to(device, dtype)[:, 3:m + 3]
    return q, k, v


def _pattern(H, m, B, budgets, seed=0, sinks=4, local=None, device=DEV):
    """select_vertical_slash on random scores; uneven per-head budgets give -1 padding."""
    g = torch.Generator().manual_seed(seed)
    nb = (m + B - 1) // B
    vert, band = torch.rand(H, m, generator=g), torch.rand(H, nb, generator=g)
    pat = select_vertical_slash(vert, band, budgets, block_size=B, sink_tokens=sinks,
                                local_diagonals=B if local is None else local)
    return pat.to(device)


def _excluded_pairs(pat, n, start):
    """(head, query block, column) triples where a column lies in a selected block."""
    B, m = pat.block_size, start + n
    qa0, nqb, _ = query_blocks(start, 0, n, B)
    qa = torch.arange(qa0, qa0 + nqb, device=pat.vertical.device)
    h = torch.arange(pat.num_heads, device=qa.device)[:, None, None]
    kb = (pat.vertical.clamp(min=0) // B)[:, None, :]                         # [H, 1, V]
    cov = covered(band_table(pat, m), h, qa[None, :, None], kb)
    return int((cov & (pat.vertical >= 0)[:, None, :]).sum())


def _reference(q, k, v, pat, start, scale, rows, keys):
    """float64 on the set intersected with rows [lo, hi) x keys [k0, k1)."""
    n = q.shape[0]
    if rows is None and keys is None:
        return reference_vertical_slash_attention(q, k, v, pat, start=start, scale=scale)
    lo, hi = rows
    k0, k1 = keys
    mask = vertical_slash_mask(pat, n, start)[:, lo:hi]
    mask[:, :, :k0] = False
    mask[:, :, k1:] = False
    return reference_attention(q[lo:hi], k.transpose(0, 1), v.transpose(0, 1), mask, scale)


def _check(q, k, v, pat, start, scale, rows=None, keys=None, tol=1e-5, **kw):
    out, lse = vertical_slash_attention_triton(q, k, v, pat, start=start, scale=scale,
                                               rows=rows, keys=keys, **kw)
    ref_o, ref_l = _reference(q, k, v, pat, start, scale, rows, keys)
    po, pl = vertical_slash_attention_portable(q, k, v, pat, start=start, scale=scale,
                                               rows=rows, keys=keys)
    assert out.dtype == q.dtype and lse.dtype == torch.float32
    assert out.shape == ref_o.shape and lse.shape == ref_l.shape
    empty = torch.isinf(ref_l.cpu())
    assert torch.equal(torch.isinf(lse.cpu()), empty) and bool((lse.cpu()[empty] < 0).all())
    assert bool((out.cpu()[empty] == 0).all())
    otol = tol if q.dtype == torch.float32 else 2e-2      # bf16: p and out rounded to bf16
    ltol = tol if q.dtype == torch.float32 else 1e-3
    for o, l, name in ((ref_o, ref_l, "reference"), (po, pl, "portable")):
        l, o = l.double().cpu(), o.double().cpu()
        torch.testing.assert_close(out.double().cpu(), o, atol=otol, rtol=otol, msg=name)
        torch.testing.assert_close(lse.double().cpu()[~empty], l[~empty], atol=ltol, rtol=ltol,
                                   msg=name)
    return empty


# H, Hkv, D, n, start, B
CASES = [
    (4, 4, 32, 45, 0, 16),        # GQA 1:1, start 0, odd n
    (6, 2, 64, 77, 37, 16),       # 3:1, unaligned start
    (7, 1, 32, 91, 70, 32),       # 7:1, unaligned start, B = 32
    (6, 2, 32, 100, 128, 64),     # aligned start, B = 64
    (7, 1, 64, 70, 201, 64),      # 7:1, unaligned, B = 64, one partial query block each side
]


def _budgets(H, m):
    """Per-head (columns, slash lines): uneven, so some heads are -1 padded; the large ones put
    columns inside selected blocks."""
    return [(6 + 5 * (h % 3) + (m // 3 if h == 1 else 0), 20 + 30 * (h % 4)) for h in range(H)]


@pytest.mark.parametrize("H, Hkv, D, n, start, B", CASES)
def test_triton_equals_portable_and_reference_fp32(H, Hkv, D, n, start, B):
    m = start + n
    q, k, v = _qkv(n, start, H, Hkv, D, torch.float32, seed=n)
    pat = _pattern(H, m, B, _budgets(H, m), seed=start)
    assert bool((pat.vertical < 0).any()) and _excluded_pairs(pat, n, start) > 0
    _check(q, k, v, pat, start, D ** -0.5)


@pytest.mark.parametrize("H, Hkv, D, n, start, B", [CASES[1], CASES[2], CASES[4]])
def test_restricted_rows_and_keys(H, Hkv, D, n, start, B):
    """The DCA building block: rows [5, n-3) x keys [k0 > 0, k1 < m); and a key range that starts
    inside the chunk, so the first rows attend nothing (lse -inf, out 0)."""
    m = start + n
    q, k, v = _qkv(n, start, H, Hkv, D, torch.float32, seed=n + 1)
    pat = _pattern(H, m, B, _budgets(H, m), seed=start + 1)
    _check(q, k, v, pat, start, 0.2, rows=(5, n - 3), keys=(17, m - 20))
    empty = _check(q, k, v, pat, start, 0.2, rows=(5, n - 3), keys=(start + 20, m))
    assert bool(empty.any()) and not bool(empty.all())
    _check(q, k, v, pat, start, 0.2, rows=(0, n), keys=(0, max(1, start - 7)))


@pytest.mark.parametrize("H, Hkv, D, n, start, B", [CASES[0], CASES[2], CASES[4]])
def test_triton_bf16(H, Hkv, D, n, start, B):
    m = start + n
    q, k, v = _qkv(n, start, H, Hkv, D, torch.bfloat16, seed=n + 2)
    pat = _pattern(H, m, B, _budgets(H, m), seed=start + 2)
    _check(q, k, v, pat, start, D ** -0.5)
    _check(q, k, v, pat, start, D ** -0.5, rows=(5, n - 3), keys=(9, m - 4))


def test_block_n_smaller_than_block_and_odd_head_dim():
    """BLOCK_N < B (sub-tiles of every block) and D not a power of two (masked head dim)."""
    H, Hkv, D, n, start, B = 6, 2, 48, 83, 45, 32
    q, k, v = _qkv(n, start, H, Hkv, D, torch.float32, seed=3)
    pat = _pattern(H, start + n, B, _budgets(H, start + n), seed=3)
    _check(q, k, v, pat, start, 0.15, block_n=16)


def test_no_forced_diagonal_band():
    """Without the local band, columns in a row's own key block are attended by the vertical
    part alone: its causal mask matters."""
    H, Hkv, D, n, start, B = 6, 3, 32, 75, 21, 16
    m = start + n
    q, k, v = _qkv(n, start, H, Hkv, D, torch.float32, seed=6)
    pat = _pattern(H, m, B, [(m // 2, 3 * B)] * H, seed=6, sinks=0)
    bands = torch.full_like(pat.bands, -1)
    for h in range(H):                           # drop band 0 (selection always forces it)
        b = pat.bands[h][pat.bands[h] > 0]
        bands[h, :len(b)] = b
    pat = VSPattern(pat.vertical, bands, B)
    assert bool((bands != 0).all())
    _check(q, k, v, pat, start, 0.3)
    _check(q, k, v, pat, start, 0.3, rows=(3, n - 1), keys=(5, m - 2))


def test_everything_selected_is_dense_causal():
    """All bands and all columns: every column lies in a selected block (all excluded), every
    block below the diagonal is full."""
    H, Hkv, D, n, start, B = 4, 2, 32, 70, 50, 16
    m = start + n
    q, k, v = _qkv(n, start, H, Hkv, D, torch.float32, seed=4)
    pat = _pattern(H, m, B, [(m, m)] * H, seed=4)
    out, lse = vertical_slash_attention_triton(q, k, v, pat, start=start, scale=0.125)
    mask = torch.arange(m, device=DEV)[None, :] <= start + torch.arange(n, device=DEV)[:, None]
    ref_o, ref_l = reference_attention(q, k.transpose(0, 1), v.transpose(0, 1), mask, 0.125)
    torch.testing.assert_close(out.double().cpu(), ref_o.cpu(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double().cpu(), ref_l.cpu(), atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="needs CUDA")
def test_triton_equals_portable_gpu():
    H, Hkv, D, n, start, B = 28, 4, 128, 4096, 12288, 128
    m = start + n
    q, k, v = _qkv(n, start, H, Hkv, D, torch.bfloat16, seed=5)
    pat = _pattern(H, m, B, [(1000, 3000 + 500 * (h % 5)) for h in range(H)], seed=5,
                   sinks=30, local=100)
    scale = D ** -0.5
    for rows, keys in ((None, None), ((100, n - 50), (4000, m - 300))):
        out, lse = vertical_slash_attention_triton(q, k, v, pat, start=start, scale=scale,
                                                   rows=rows, keys=keys)
        po, pl = vertical_slash_attention_portable(q, k, v, pat, start=start, scale=scale,
                                                   rows=rows, keys=keys)
        empty = torch.isinf(pl)
        assert torch.equal(torch.isinf(lse), empty) and bool((out[empty] == 0).all())
        torch.testing.assert_close(out.float(), po.float(), atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(lse[~empty], pl[~empty], atol=1e-3, rtol=1e-3)
