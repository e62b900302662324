"""DCA + sparse prefill: selection at DCA positions (or continuous ones), attention at DCA
positions, against the float64 DCA reference restricted to the attended set."""
from __future__ import annotations

import pytest
import torch

from turboctx.attention.backend import AttentionBatch, SeqChunk
from turboctx.attention.dca import DCAConfig
from turboctx.attention.dca_reference import reference_dca_attention, yarn_logit_scale
from turboctx.attention.sparse_blocks import causal_entries, vertical_slash_mask
from turboctx.attention.sparse_config import SparseConfig
from turboctx.attention.sparse_dca import DCASparseAttentionBackend, merged_parts
from turboctx.attention.dca import plan_parts
from turboctx.attention.sparse_pattern import vertical_slash_scores_torch
from turboctx.kv_cache import KVCache, SeqSlots
from turboctx.models.layers import RotaryEmbedding, apply_rotary
from sparse_expect import expected_sparse_rows, feed_prompt


def test_merged_parts_join_adjacent_key_ranges():
    cfg = DCAConfig(chunk_size=24, local_size=8, original_max_position_embeddings=24)   # cl 16
    for start, n in ((0, 40), (10, 23), (33, 30), (16, 5)):
        parts = merged_parts(plan_parts(cfg, start, n))
        for i in range(n):   # each row's key ranges still cover [0, position] exactly once
            cover = sorted((k0, k1) for lo, hi, _, k0, k1 in parts if lo <= i < hi)
            flat = [k for k0, k1 in cover for k in range(k0, k1)]
            assert flat[:start + i + 1] == list(range(start + i + 1))


CASES = [  # H, Hkv, D, chunk_size, local, prefill chunks, block, yarn, selection
    (7, 1, 64, 48, 16, [100, 93], 16, False, "dca"),        # boundaries inside DCA chunks, 7:1
    (6, 2, 64, 40, 8, [64, 64, 71], 16, True, "dca"),        # chunk edges on DCA edges, 3:1, YaRN
    (6, 2, 128, 64, 0, [150, 61], 32, False, "dca"),         # no local window, odd lengths
    (6, 2, 64, 40, 8, [64, 64, 71], 16, True, "continuous"),
    (7, 1, 64, 48, 16, [100, 93], 16, False, "continuous"),
]


@pytest.mark.parametrize("H, Hkv, D, cs, local, chunks, B, yarn, selection", CASES)
def test_dca_sparse_backend_equals_reference(H, Hkv, D, cs, local, chunks, B, yarn, selection):
    total = sum(chunks)
    rotary = RotaryEmbedding(D, theta=500.0)
    dca = DCAConfig(cs, local, cs, yarn_scaling=yarn)
    sparse = SparseConfig(threshold=chunks[0], vertical_size=12, slash_size=3 * B, last_q=32,
                          block_size=B, sink_tokens=3, local_diagonals=B, kernel="portable",
                          dca_selection=selection)
    backend = DCASparseAttentionBackend(rotary, D, dca, sparse, record_recall=True)
    g = torch.Generator().manual_seed(total)
    q, k, v = (torch.randn(total, h, D, generator=g) for h in (H, Hkv, Hkv))
    cache = KVCache(1, Hkv, D, num_blocks=60, block_size=8, dtype=torch.float32, device="cpu")
    slots = SeqSlots(block_table=list(range(59, 0, -1)), block_size=8)
    for start, n, out, _ in feed_prompt(backend, q, k, v, chunks, cache, slots):
        m = start + n
        mult = torch.full((n,), yarn_logit_scale(m, cs) if yarn else 1.0, dtype=torch.float64)
        mask = None
        if m > sparse.threshold:        # every row of these chunks is at or past it
            pat = backend.last_pattern
            mask = vertical_slash_mask(pat, n, start)
            assert mask.sum() < H * causal_entries(n, start)
            _check_selection(backend, q[:m] * mult[0].item(), k[:m], rotary, start, n)
        want, _ = reference_dca_attention(q[start:m], k[:m], v[:m], torch.arange(start, m),
                                          torch.arange(m), cs, local, rotary.inv_freq, D ** -0.5,
                                          rotary.attention_scaling, mult, mask=mask)
        assert (out.double() - want).abs().max().item() < 1e-4
    st = backend.stats
    assert st.sparse_chunks == len(chunks) - 1 and st.dense_chunks == 1
    rec = torch.stack(st.recall[0])
    assert rec.shape == (len(chunks) - 1, H) and bool(((rec > 0) & (rec <= 1 + 1e-5)).all())


def _dca_query_position(p: int, j: int, cfg) -> int:
    """The rotary position DCA gives query p against key j (keys sit at j % chunk_len)."""
    cl = cfg.chunk_len
    cq, ck, r = p // cl, j // cl, p % cl
    if ck == cq:
        return r
    if ck == cq - 1 and r < cfg.local_size:
        return r + cl
    return cfg.chunk_size - 1


def _check_selection(backend, q, k, rotary, start, n):
    """The scores the backend selected from equal, entry by entry, the softmax of the last
    queries at DCA positions ('dca') or ordinary attention at true positions ('continuous')."""
    m = start + n
    L, B, scale = backend.config.last_q, backend.config.block_size, backend.scale
    cache_keys = apply_rotary(k, *rotary.cos_sin(torch.arange(m) % backend.cfg.chunk_len,
                                                  torch.float32)).transpose(0, 1)   # [Hkv, m, D]
    segs = backend.selection_segments(q[start:], start, m)
    got = vertical_slash_scores_torch(segs, cache_keys, m - L, scale=scale, block_size=B)
    if backend.config.dca_selection == "continuous":
        cos, sin = rotary.cos_sin(torch.arange(m), torch.float32)
        qr, kr = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin).transpose(0, 1)
        want = vertical_slash_scores_torch(qr[m - L:], kr, m - L, scale=scale, block_size=B)
    else:   # one (query, key) product at a time, from the position rule written out above
        H, G = q.shape[1], q.shape[1] // k.shape[1]
        s = torch.full((H, L, m), float("-inf"))
        for i, p in enumerate(range(m - L, m)):
            for j in range(p + 1):
                cos, sin = rotary.cos_sin(torch.tensor([_dca_query_position(p, j, backend.cfg)]),
                                          torch.float32)
                qp = apply_rotary(q[p:p + 1], cos, sin)[0]                            # [H, D]
                s[:, i, j] = (qp * cache_keys[:, j].repeat_interleave(G, 0)).sum(-1) * scale
        p_ = torch.softmax(s, -1)
        from turboctx.attention.sparse_pattern import block_diagonal_sums
        want = (p_.sum(1), block_diagonal_sums(p_, m - L, B))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_dca_sparse_below_threshold_is_plain_dca():
    from turboctx.attention.dca import DCAAttentionBackend
    H, Hkv, D, total = 6, 2, 64, 90
    rotary = RotaryEmbedding(D, theta=500.0)
    dca = DCAConfig(32, 8, 32, yarn_scaling=False)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(total, h, D, generator=g) for h in (H, Hkv, Hkv))
    outs = []
    for backend in (DCASparseAttentionBackend(rotary, D, dca, SparseConfig(threshold=10**6)),
                    DCAAttentionBackend(rotary, D, dca)):
        cache = KVCache(1, Hkv, D, num_blocks=12, block_size=8, dtype=torch.float32, device="cpu")
        slots = SeqSlots(block_table=list(range(12)), block_size=8)
        batch = AttentionBatch([SeqChunk(0, total, 0, slots)], torch.arange(total), cache)
        backend.prepare(batch, torch.float32)
        outs.append(backend.forward(0, q, k, v, batch))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA")])])
@pytest.mark.parametrize("tail, chunks", [(30, [64, 64, 71]), (100, [64, 64, 71]), (1, [150, 61])])
def test_dca_sparse_prompt_tail_is_plain_dca(tail, chunks, device):
    """With DCA the prompt's last `dense_tail` rows get plain DCA attention (every key), so do
    the rows below the threshold, and the rows between run sparse as a chunk of their own.
    On CUDA: the Triton kernels and the GPU DCA path (TF32 dots: a looser bound)."""
    H, Hkv, D, cs, local, B = 6, 2, 64, 40, 8, 16
    total = sum(chunks)
    rotary = RotaryEmbedding(D, theta=500.0)
    dca = DCAConfig(cs, local, cs, yarn_scaling=True)
    sparse = SparseConfig(threshold=chunks[0] + 9, vertical_size=12, slash_size=3 * B, last_q=32,
                          block_size=B, sink_tokens=3, local_diagonals=B,
                          kernel="portable" if device == "cpu" else "triton", dense_tail=tail)
    backend = DCASparseAttentionBackend(RotaryEmbedding(D, theta=500.0).to(device), D, dca, sparse)
    bound = 1e-4 if device == "cpu" else 5e-3
    g = torch.Generator().manual_seed(tail)
    q, k, v = (torch.randn(total, h, D, generator=g) for h in (H, Hkv, Hkv))
    cache = KVCache(1, Hkv, D, num_blocks=60, block_size=8, dtype=torch.float32, device=device)
    slots = SeqSlots(block_table=list(range(59, 0, -1)), block_size=8)
    sparse_rows = 0
    for start, n, out, ran_sparse in feed_prompt(backend, q, k, v, chunks, cache, slots, total, device):
        m = start + n
        mult = torch.full((n,), yarn_logit_scale(m, cs), dtype=torch.float64)
        a, b = expected_sparse_rows(start, n, sparse.threshold, total, tail) or (n, n)
        assert ran_sparse == (a < b)
        mask = None
        if a < b:       # rows [a, b) ran sparse, by their pattern; the others plain DCA
            mask = torch.ones(H, n, m, dtype=torch.bool)
            mask[:, a:b, :start + b] = vertical_slash_mask(backend.last_pattern.to("cpu"), b - a, start + a)
            mask[:, a:b, start + b:] = False
            sparse_rows += b - a
        want, _ = reference_dca_attention(q[start:m], k[:m], v[:m], torch.arange(start, m),
                                          torch.arange(m), cs, local, rotary.inv_freq, D ** -0.5,
                                          rotary.attention_scaling, mult, mask=mask)
        assert (out.double() - want).abs().max().item() < bound
        d = max(b, min(n, total - tail - start))
        if d < n:   # the tail: plain DCA over every key
            plain, _ = reference_dca_attention(q[start + d:m], k[:m], v[:m], torch.arange(start + d, m),
                                               torch.arange(m), cs, local, rotary.inv_freq, D ** -0.5,
                                               rotary.attention_scaling, mult[d:])
            assert (out[d:].double() - plain).abs().max().item() < bound
    assert backend.stats.dense_tail_rows == tail and sparse_rows > 0
