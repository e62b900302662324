"""DCA + sparse prefill: selection at the positions DCA attends with, attention at DCA positions,
against the float64 DCA reference restricted to the attended set."""
from __future__ import annotations

import pytest
import torch

from backends import dca_backend, sparse_backend
from turboctx.attention.backend import AttentionBatch, SeqChunk, SeqQueries
from turboctx.attention.dca import DCAConfig, plan_parts
from turboctx.attention.reference import reference_dca_attention, yarn_logit_scale
from turboctx.attention.rotary import RotaryEmbedding, apply_rotary
from turboctx.attention.sparse.blocks import causal_entries, vertical_slash_mask
from turboctx.attention.sparse.config import SparseConfig
from turboctx.attention.sparse.prefill import merged_parts
from turboctx.attention.sparse.reference import block_diagonal_sums, reference_vertical_slash_scores
from turboctx.attention.sparse.stats import RecallObserver
from turboctx.kv_cache import KVCache, SeqSlots
from sparse_expect import expected_sparse_rows, feed_prompt


def _yarn(start: int, m: int, cs: int, yarn: bool = True) -> torch.Tensor:
    """YaRN's logit multiplier of the rows at positions [start, m), from each row's position."""
    return torch.tensor([yarn_logit_scale(p + 1, cs) if yarn else 1.0 for p in range(start, m)],
                        dtype=torch.float64)


def test_merged_parts_join_adjacent_key_ranges():
    cfg = DCAConfig(chunk_size=24, local_size=8, original_max_position_embeddings=24)   # cl 16
    for start, n in ((0, 40), (10, 23), (33, 30), (16, 5)):
        parts = merged_parts(plan_parts(cfg, start, n))
        for i in range(n):   # each row's key ranges still cover [0, position] exactly once
            cover = sorted((k0, k1) for lo, hi, _, k0, k1 in parts if lo <= i < hi)
            flat = [k for k0, k1 in cover for k in range(k0, k1)]
            assert flat[:start + i + 1] == list(range(start + i + 1))


CASES = [  # H, Hkv, D, chunk_size, local, prefill chunks, block, yarn
    (7, 1, 64, 48, 16, [100, 93], 16, False),        # boundaries inside DCA chunks, 7:1
    (6, 2, 64, 40, 8, [64, 64, 71], 16, True),        # chunk edges on DCA edges, 3:1, YaRN
    (6, 2, 128, 64, 0, [150, 61], 32, False),         # no local window, odd lengths
]


@pytest.mark.parametrize("H, Hkv, D, cs, local, chunks, B, yarn", CASES)
def test_dca_sparse_backend_equals_reference(H, Hkv, D, cs, local, chunks, B, yarn):
    total = sum(chunks)
    rotary = RotaryEmbedding(D, theta=500.0)
    dca = DCAConfig(cs, local, cs, yarn_scaling=yarn)
    sparse = SparseConfig(threshold=chunks[0], vertical_size=12, slash_size=3 * B, last_q=32,
                          block_size=B, sink_tokens=3, local_diagonals=B)
    backend = sparse_backend(rotary, D, sparse, dca=dca, kernel="portable")
    observer = backend.pattern.observer = RecallObserver()
    g = torch.Generator().manual_seed(total)
    q, k, v = (torch.randn(total, h, D, generator=g) for h in (H, Hkv, Hkv))
    cache = KVCache(1, Hkv, D, num_blocks=60, block_size=8, dtype=torch.float32, device="cpu")
    slots = SeqSlots(block_table=list(range(59, 0, -1)), block_size=8)
    for start, n, out, _ in feed_prompt(backend, q, k, v, chunks, cache, slots):
        m = start + n
        mult = _yarn(start, m, cs, yarn)
        mask = None
        if m > sparse.threshold:        # every row of these chunks is at or past it
            pat = backend.pattern.last_pattern
            mask = vertical_slash_mask(pat, n, start)
            assert mask.sum() < H * causal_entries(n, start)
            scaled = q[:m] * _yarn(0, m, cs, yarn).float()[:, None, None]
            _check_selection(backend, dca, sparse, scaled, k[:m], rotary, start, n)
        want, _ = reference_dca_attention(q[start:m], k[:m], v[:m], torch.arange(start, m),
                                          torch.arange(m), cs, local, rotary.inv_freq, D ** -0.5,
                                          rotary.attention_scaling, mult, mask=mask)
        assert (out.double() - want).abs().max().item() < 1e-4
    st = backend.pattern.stats
    assert st.sparse_chunks == len(chunks) - 1 and st.dense_chunks == 1
    rec = torch.stack(observer.recall[0])
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


def _check_selection(backend, cfg, sparse, q, k, rotary, start, n):
    """The scores the backend selected from equal, entry by entry, the softmax of the last
    queries at the positions DCA attends with."""
    m = start + n
    L, B, scale = sparse.last_q, sparse.block_size, q.shape[-1] ** -0.5
    cache_keys = apply_rotary(k, *rotary.cos_sin(torch.arange(m) % cfg.chunk_len,
                                                  torch.float32)).transpose(0, 1)   # [Hkv, m, D]
    segs = backend.positions.selection_queries(SeqQueries(q[start:], {}), start, m, L)
    got = reference_vertical_slash_scores(segs, cache_keys, m - L, scale=scale, block_size=B)
    H, G = q.shape[1], q.shape[1] // k.shape[1]
    s = torch.full((H, L, m), float("-inf"))
    for i, p in enumerate(range(m - L, m)):       # one (query, key) product at a time
        for j in range(p + 1):
            cos, sin = rotary.cos_sin(torch.tensor([_dca_query_position(p, j, cfg)]), torch.float32)
            qp = apply_rotary(q[p:p + 1], cos, sin)[0]                            # [H, D]
            s[:, i, j] = (qp * cache_keys[:, j].repeat_interleave(G, 0)).sum(-1) * scale
    p_ = torch.softmax(s, -1)
    want = (p_.sum(1), block_diagonal_sums(p_, m - L, B))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)



def test_dca_sparse_below_threshold_is_plain_dca():
    H, Hkv, D, total = 6, 2, 64, 90
    rotary = RotaryEmbedding(D, theta=500.0)
    dca = DCAConfig(32, 8, 32, yarn_scaling=False)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(total, h, D, generator=g) for h in (H, Hkv, Hkv))
    outs = []
    for backend in (sparse_backend(rotary, D, SparseConfig(threshold=10**6), dca=dca),
                    dca_backend(rotary, D, dca)):
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
                          block_size=B, sink_tokens=3, local_diagonals=B, dense_tail=tail)
    backend = sparse_backend(RotaryEmbedding(D, theta=500.0).to(device), D, sparse, dca=dca,
                             kernel="portable" if device == "cpu" else "triton")
    bound = 1e-4 if device == "cpu" else 5e-3
    g = torch.Generator().manual_seed(tail)
    q, k, v = (torch.randn(total, h, D, generator=g) for h in (H, Hkv, Hkv))
    cache = KVCache(1, Hkv, D, num_blocks=60, block_size=8, dtype=torch.float32, device=device)
    slots = SeqSlots(block_table=list(range(59, 0, -1)), block_size=8)
    sparse_rows = 0
    for start, n, out, ran_sparse in feed_prompt(backend, q, k, v, chunks, cache, slots, total, device):
        m = start + n
        mult = _yarn(start, m, cs)
        a, b = expected_sparse_rows(start, n, sparse.threshold, total, tail) or (n, n)
        assert ran_sparse == (a < b)
        mask = None
        if a < b:       # rows [a, b) ran sparse, by their pattern; the others plain DCA
            mask = torch.ones(H, n, m, dtype=torch.bool)
            mask[:, a:b, :start + b] = vertical_slash_mask(backend.pattern.last_pattern.to("cpu"), b - a, start + a)
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
    assert backend.pattern.stats.dense_tail_rows == tail and sparse_rows > 0
