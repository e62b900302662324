"""Vertical-slash sparse prefill: config file, pattern estimation, kernels vs reference, backend."""
from __future__ import annotations

import json

import pytest
import torch

from backends import dense_backend, sparse_backend
from turboctx.attention.backend import AttentionBatch, SeqChunk
from turboctx.attention.reference import causal_mask, reference_attention
from turboctx.attention.sparse.attention import vertical_slash_attention_portable
from turboctx.attention.sparse.blocks import (causal_entries, count_attended, kv_block_lists,
                                              query_blocks, slash_key_blocks, vertical_slash_mask)
from turboctx.attention.sparse.config import (SparseConfig, load_sparse_attention_config,
                                              write_sparse_attention_config)
from turboctx.attention.sparse.pattern import VSPattern, forced_bands, select_vertical_slash
from turboctx.attention.sparse.reference import (block_diagonal_sums, reference_vertical_slash_attention,
                                                 reference_vertical_slash_scores)
from turboctx.attention.sparse.scores import estimate_vertical_slash
from turboctx.attention.sparse.stats import RecallObserver
from turboctx.attention.rotary import RotaryEmbedding, apply_rotary
from turboctx.kv_cache import KVCache, SeqSlots
from sparse_expect import expected_sparse_rows, feed_prompt

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _qkv(n, start, H, Hkv, D, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    m = start + n
    q = torch.randn(n, H, D, generator=g)
    k = torch.randn(Hkv, m, D, generator=g)
    v = torch.randn(Hkv, m, D, generator=g)
    return q.to(device, dtype), k.to(device, dtype), v.to(device, dtype)


def _random_pattern(H, m, n_vert, n_bands, B, seed=0):
    """Random columns and bands; band 0 always (as selection forces it); heads with different
    counts exercise the -1 padding."""
    g = torch.Generator().manual_seed(seed)
    nb = (m + B - 1) // B
    vert = torch.full((H, n_vert), -1, dtype=torch.int64)
    bands = torch.full((H, n_bands), -1, dtype=torch.int64)
    for h in range(H):
        nv, ns = max(1, n_vert - h), max(1, min(nb, n_bands - h))
        vert[h, :nv] = torch.randperm(m, generator=g)[:nv].sort().values
        bands[h, :ns] = torch.cat([torch.zeros(1, dtype=torch.int64),
                                   1 + torch.randperm(nb - 1, generator=g)[:ns - 1]]).sort().values
    return VSPattern(vert, bands, B)


# ---------------------------------------------------------------- config file

def test_config_file_roundtrip_and_qwen_format(tmp_path):
    budgets = [[(1000, 6096), (30, 800)], [(3500, 100), (100, 750)]]
    write_sparse_attention_config(tmp_path, budgets, [[0.9, 0.8], [0.95, 1.0]])
    doc = json.loads((tmp_path / "sparse_attention_config.json").read_text())
    assert doc[1]["0"] == ["vertical_and_slash", 3500, 100, 0.95]
    cfg = SparseConfig.for_model_dir(tmp_path, threshold=128)
    assert cfg.budgets(1, 2) == budgets[1] and cfg.head_scores[0] == [0.9, 0.8]
    assert cfg.budgets(5, 3) == [(1000, 6096)] * 3          # layers beyond the file: defaults
    with pytest.raises(ValueError, match="recalibrate"):
        cfg.budgets(0, 4)
    # a dict keyed by layer index is accepted too
    (tmp_path / "d.json").write_text(json.dumps({"1": {"0": ["vertical_and_slash", 1, 2, 1]},
                                                 "0": {"0": ["vertical_and_slash", 3, 4, 1]}}))
    assert load_sparse_attention_config(tmp_path / "d.json")[0] == [[(3, 4)], [(1, 2)]]
    assert SparseConfig.for_model_dir(tmp_path / "nowhere").head_budgets is None


@pytest.mark.parametrize("kwargs, words", [
    (dict(threshold=0), "threshold"), (dict(block_size=0), "block_size"),
    (dict(block_size=48), "block_size"), (dict(local_diagonals=0), "local_diagonals"),
    (dict(head_budgets=[[(10, 0)]]), "layer 0 head 0"),
])
def test_config_errors_say_what_to_change(kwargs, words):
    with pytest.raises(ValueError, match=words):
        SparseConfig(**kwargs)


# ---------------------------------------------------------------- pattern estimation

@pytest.mark.parametrize("q_pos0, L, B", [(10, 5, 4), (13, 7, 16), (0, 9, 4)])
def test_block_diagonal_sums_brute_force(q_pos0, L, B):
    m = q_pos0 + L + 3
    p = torch.rand(3, L, m, dtype=torch.float64)
    p[:, torch.arange(m)[None, :] > q_pos0 + torch.arange(L)[:, None]] = 0     # causal, as softmax gives
    got = block_diagonal_sums(p, q_pos0, B)
    want = torch.zeros(3, (m + B - 1) // B, dtype=torch.float64)
    for i in range(L):
        for j in range(q_pos0 + i + 1):
            want[:, (q_pos0 + i) // B - j // B] += p[:, i, j]
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("H, Hkv, m, L, B", [(7, 1, 411, 64, 16), (6, 2, 300, 33, 32)])
def test_scores_brute_force(H, Hkv, m, L, B):
    q, k, _ = _qkv(L, m - L, H, Hkv, 32, seed=m)
    k = k[:, :m]
    vert, band = reference_vertical_slash_scores(q, k, m - L, scale=0.3, block_size=B)
    s = torch.einsum("lhd,hmd->hlm", q.double(), k.double().repeat_interleave(H // Hkv, 0)) * 0.3
    pos = m - L + torch.arange(L)
    s = s.masked_fill(torch.arange(m)[None, :] > pos[:, None], float("-inf"))
    p = torch.softmax(s, -1)
    torch.testing.assert_close(vert.double(), p.sum(1), atol=1e-5, rtol=1e-5)
    d = (pos[:, None] // B - torch.arange(m)[None, :] // B).clamp(min=0)      # block diagonal of each entry
    want = torch.zeros(H, (m + B - 1) // B, dtype=torch.float64)
    want.scatter_add_(1, d.flatten().expand(H, -1), p.flatten(1))
    torch.testing.assert_close(band.double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("H, Hkv", [(7, 1), (6, 2)])
def test_estimation_finds_planted_column_and_diagonal(H, Hkv):
    m, D, L, B = 411, 64, 64, 16
    g = torch.Generator().manual_seed(1)
    k = torch.nn.functional.normalize(torch.randn(Hkv, m, D, generator=g), dim=-1)
    cols = [50 + 37 * h for h in range(H)]          # planted column of head h
    diags = [120 + 11 * h for h in range(H)]        # planted diagonal of head h
    q = torch.zeros(L, H, D)
    for h in range(H):
        kv = k[h // (H // Hkv)]
        for i in range(L):
            pos = m - L + i
            q[i, h] = 8 * kv[pos - diags[h]] + 8 * kv[cols[h]]
    # the diagonal's entries of the last L rows lie in two block diagonals (by the rows'
    # in-block offsets); the one holding most of them beats everything else
    pos = m - L + torch.arange(L)
    pat = estimate_vertical_slash(q, k, m - L, [(1, 2 * B)] * H, scale=1.0, block_size=B,
                                  sink_tokens=0, local_diagonals=1)
    for h in range(H):
        assert pat.vertical[h].tolist() == [cols[h]]
        t = pos // B - (pos - diags[h]) // B                    # block diagonal of each row's entry
        counts = torch.bincount(t)
        assert pat.bands[h][0] == 0                             # t = 0 is always kept
        assert counts[pat.bands[h][1]] == counts.max()          # a tie may go either way
    # forced columns and block diagonals are always there and count as part of larger budgets
    pat = estimate_vertical_slash(q, k, m - L, [(40, 120)] * H, scale=1.0, block_size=B,
                                  sink_tokens=30, local_diagonals=40)
    for h in range(H):
        vert, bands = pat.vertical[h].tolist(), pat.bands[h].tolist()
        counts = torch.bincount(pos // B - (pos - diags[h]) // B)
        assert set(range(30)) <= set(vert) and cols[h] in vert and len(vert) == 40
        assert {0, 1, 2, 3} <= set(bands) and len(bands) == 8
        assert max(counts[t] for t in bands if t < len(counts)) == counts.max()


def test_selection_budgets_in_block_diagonals():
    """s slash lines buy max(ceil(s / B), forced) block diagonals; v columns max(v, sinks);
    clipped to m. forced: those holding the local diagonals for every row."""
    assert [forced_bands(d, 64) for d in (1, 64, 65, 100, 129, 130)] == [1, 2, 2, 3, 3, 4]
    H, m, B = 3, 1000, 64
    g = torch.Generator().manual_seed(0)
    vert, band = torch.rand(H, m, generator=g), torch.rand(H, (m + B - 1) // B, generator=g)
    pat = select_vertical_slash(vert, band, [(0, 1), (100, 6096), (5000, 130)], block_size=B,
                                sink_tokens=30, local_diagonals=100)
    assert [(pat.vertical[h] >= 0).sum().item() for h in range(H)] == [30, 100, 1000]
    assert [(pat.bands[h] >= 0).sum().item() for h in range(H)] == [3, 16, 3]
    for h in range(H):
        b = pat.bands[h][pat.bands[h] >= 0]
        assert b[:3].tolist() == [0, 1, 2] and bool((b.diff() > 0).all())


# ---------------------------------------------------------------- the attended set

def test_slash_key_blocks_match_definition():
    H, B, start, n = 3, 16, 45, 77
    m = start + n
    pat = _random_pattern(H, m, 4, 5, B, seed=3)
    qa0, nqb, pad = query_blocks(start, 0, n, B)
    assert (qa0, pad) == (2, 13)
    qa = torch.arange(qa0, qa0 + nqb)
    for kb_lo, kb_hi in ((0, (m + B - 1) // B), (2, 6)):
        x = slash_key_blocks(pat.bands, qa, kb_lo, kb_hi)
        for h in range(H):
            bands = [b for b in pat.bands[h].tolist() if b >= 0]
            for t, a in enumerate(qa.tolist()):
                want = sorted({a - b for b in bands if kb_lo <= a - b < kb_hi})
                got = [v for v in x[h, t].tolist() if v < (1 << 60)]
                assert got == want


def test_every_entry_of_a_selected_block_diagonal_is_attended_and_nothing_else():
    H, B, start, n = 2, 16, 70, 90
    pat = _random_pattern(H, start + n, 1, 4, B, seed=5)
    pat = VSPattern(torch.full((H, 1), -1), pat.bands, B)          # slash part alone
    mask = vertical_slash_mask(pat, n, start)
    for h in range(H):
        sel = set(pat.bands[h][pat.bands[h] >= 0].tolist())
        for i in range(n):
            p = start + i
            for j in range(start + n):
                assert bool(mask[h, i, j]) == (j <= p and p // B - j // B in sel)


@pytest.mark.parametrize("start, n, lo, hi, k0, k1", [
    (45, 77, 0, 77, 0, 122), (45, 77, 10, 60, 17, 100), (64, 64, 0, 64, 16, 128), (0, 50, 3, 50, 0, 40),
])
def test_kv_block_lists_cover_the_set_and_full_blocks_need_no_mask(start, n, lo, hi, k0, k1):
    H, B = 3, 16
    pat = _random_pattern(H, start + n, 4, 6, B, seed=n)
    pn, pi, fn, fi = kv_block_lists(pat, start, lo, hi, k0, k1)
    qa0, nqb, pad = query_blocks(start, lo, hi, B)
    mask = vertical_slash_mask(VSPattern(torch.full((H, 1), -1), pat.bands, B), n, start)
    mask[:, :, :k0] = False
    mask[:, :, k1:] = False
    for h in range(H):
        for t in range(nqb):
            part = pi[0, h, t, :pn[0, h, t]].tolist()
            full = fi[0, h, t, :fn[0, h, t]].tolist()
            assert part == sorted(part) and full == sorted(full) and not set(part) & set(full)
            rows = [i for i in range(lo, hi) if (start + i) // B == qa0 + t]
            blocks = {(j // B) - k0 // B for i in rows for j in range(start + n) if mask[h, i, j]}
            assert blocks <= set(part) | set(full)
            for kb in full:   # every entry of a full block is attended, for every row
                keys = range((kb + k0 // B) * B, (kb + k0 // B + 1) * B)
                assert all(mask[h, i, j] for i in rows for j in keys)


def test_count_attended_is_the_mask_size():
    for H, n, start, B in ((3, 77, 45, 16), (4, 200, 0, 32), (2, 64, 256, 64)):
        pat = _random_pattern(H, start + n, 9, 5, B, seed=start)
        mask = vertical_slash_mask(pat, n, start)
        assert torch.equal(count_attended(pat, n, start), mask.sum((1, 2)))


# ---------------------------------------------------------------- kernels vs reference

CASES = [(7, 1, 64, 133, 0, 16), (7, 1, 64, 97, 250, 32), (6, 2, 128, 150, 217, 16),
         (6, 2, 64, 64, 300, 64)]


@pytest.mark.parametrize("H, Hkv, D, n, start, B", CASES)
def test_portable_equals_reference_on_its_set(H, Hkv, D, n, start, B):
    q, k, v = _qkv(n, start, H, Hkv, D, seed=n)
    pat = _random_pattern(H, start + n, 9, 4, B, seed=start)
    scale = D ** -0.5
    ref_o, ref_l = reference_vertical_slash_attention(q, k, v, pat, start=start, scale=scale)
    out, lse = vertical_slash_attention_portable(q, k, v, pat, start=start, scale=scale)
    torch.testing.assert_close(out.double(), ref_o, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), ref_l, atol=2e-5, rtol=1e-5)
    assert vertical_slash_mask(pat, n, start).sum() < H * causal_entries(n, start)


@pytest.mark.parametrize("H, Hkv, D, n, start, B", CASES[:3])
def test_restricted_rows_and_keys_equal_reference(H, Hkv, D, n, start, B):
    """The DCA building block: the set intersected with rows [lo, hi) x keys [k0, k1)."""
    q, k, v = _qkv(n, start, H, Hkv, D, seed=n + 1)
    pat = _random_pattern(H, start + n, 9, 4, B, seed=start + 1)
    m = start + n
    lo, hi, k0, k1 = 5, n - 3, 17, m - 20
    mask = vertical_slash_mask(pat, n, start)[:, lo:hi]
    mask[:, :, :k0] = False
    mask[:, :, k1:] = False
    ref_o, ref_l = reference_attention(q[lo:hi], k.transpose(0, 1), v.transpose(0, 1), mask, 0.2)
    out, lse = vertical_slash_attention_portable(q, k, v, pat, start=start, scale=0.2,
                                                 rows=(lo, hi), keys=(k0, k1))
    torch.testing.assert_close(out.double(), ref_o, atol=2e-5, rtol=1e-5)
    empty = torch.isinf(ref_l)
    assert torch.equal(torch.isinf(lse), empty) and (out[empty] == 0).all()
    torch.testing.assert_close(lse.double()[~empty], ref_l[~empty], atol=2e-5, rtol=1e-5)


def test_everything_selected_equals_dense():
    H, Hkv, D, n, start, B = 6, 2, 64, 101, 180, 16
    m = start + n
    q, k, v = _qkv(n, start, H, Hkv, D, seed=7)
    all_cols = torch.arange(m).expand(H, m)
    pat = VSPattern(all_cols.clone(), torch.arange((m + B - 1) // B).expand(H, -1).clone(), B)
    out, lse = vertical_slash_attention_portable(q, k, v, pat, start=start, scale=0.125)
    mask = causal_mask(start + torch.arange(n), torch.arange(m))
    ref_o, ref_l = reference_attention(q, k.transpose(0, 1), v.transpose(0, 1), mask, 0.125)
    torch.testing.assert_close(out.double(), ref_o, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), ref_l, atol=1e-5, rtol=1e-5)
    assert int(count_attended(pat, n, start).sum()) == H * causal_entries(n, start)


# ---------------------------------------------------------------- backend through the KV cache

@pytest.mark.parametrize("H, Hkv", [(7, 1), (6, 2)])
def test_backend_chunked_prefill_equals_reference_of_its_set(H, Hkv):
    D, B, total, chunks = 64, 16, 301, [100, 100, 101]
    rotary = RotaryEmbedding(D, 10000.0)
    g = torch.Generator().manual_seed(H)
    q, k, v = (torch.randn(total, h, D, generator=g) for h in (H, Hkv, Hkv))
    cfg = SparseConfig(threshold=150, vertical_size=20, slash_size=12, last_q=32, block_size=B,
                       sink_tokens=4, local_diagonals=8)
    backend = sparse_backend(rotary, D, cfg, kernel="portable")
    observer = backend.pattern.observer = RecallObserver()
    cache = KVCache(1, Hkv, D, num_blocks=40, block_size=8, dtype=torch.float32, device="cpu")
    slots = SeqSlots(block_table=list(range(39, 0, -1)), block_size=8)   # gathered, not a view
    cos, sin = rotary.cos_sin(torch.arange(total), torch.float32)
    qr, kr = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    for start, n, out, _ in feed_prompt(backend, q, k, v, chunks, cache, slots):
        m, rows = start + n, expected_sparse_rows(start, n, cfg.threshold)
        mask = causal_mask(torch.arange(start, m), torch.arange(m)).expand(H, n, m).clone()
        if rows:      # rows below the threshold attend densely; rows [a, b) by their pattern
            a, b = rows
            mask[:, a:b, :start + b] = vertical_slash_mask(backend.pattern.last_pattern, b - a, start + a)
            assert a == max(0, cfg.threshold - start) and mask.sum() < H * causal_entries(n, start)
        ref, _ = reference_attention(qr[start:m], kr[:m], v[:m], mask, D ** -0.5)
        torch.testing.assert_close(out.double(), ref, atol=3e-5, rtol=1e-5)
    st = backend.pattern.stats
    assert (st.sparse_chunks, st.dense_chunks) == (2, 1)
    assert 0 < st.density < 1 and st.estimate_s > 0
    assert list(st.density_by_chunk()) == [150, 200]      # per sparse part's start
    rec = torch.stack(observer.recall[0])                 # [sparse chunks, H]
    assert set(observer.recall) == {0} and rec.shape == (2, H)
    assert bool(((rec > 0) & (rec <= 1 + 1e-5)).all())
    # decode after the prefill stays dense and exact
    batch = AttentionBatch([SeqChunk(0, 1, total, slots)], torch.tensor([total]), cache)
    backend.prepare(batch, torch.float32)
    q1, k1, v1 = (torch.randn(1, h, D, generator=g) for h in (H, Hkv, Hkv))
    out = backend.forward(0, q1, k1, v1, batch)
    c1, s1 = rotary.cos_sin(torch.tensor([total]), torch.float32)
    keys = torch.cat([kr, apply_rotary(k1, c1, s1)])
    ref, _ = reference_attention(apply_rotary(q1, c1, s1), keys, torch.cat([v, v1]),
                                 torch.ones(1, total + 1, dtype=torch.bool), D ** -0.5)
    torch.testing.assert_close(out.double(), ref, atol=3e-5, rtol=1e-5)
    assert st.sparse_chunks == 2


def test_backend_with_full_budgets_equals_dense_backend():
    H, Hkv, D, total, chunks = 6, 2, 64, 203, [64, 139]
    rotary = RotaryEmbedding(D, 10000.0)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(total, h, D, generator=g) for h in (H, Hkv, Hkv))
    cfg = SparseConfig(threshold=1, vertical_size=10**6, slash_size=10**6, block_size=16)
    outs = {}
    for name, backend in (("sparse", sparse_backend(rotary, D, cfg)),
                          ("dense", dense_backend(rotary, D))):
        cache = KVCache(1, Hkv, D, num_blocks=26, block_size=8, dtype=torch.float32, device="cpu")
        slots = SeqSlots(block_table=list(range(26)), block_size=8)
        outs[name] = torch.cat([o for _, _, o, _ in feed_prompt(backend, q, k, v, chunks, cache, slots)])
    torch.testing.assert_close(outs["sparse"], outs["dense"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, requires_cuda])])
@pytest.mark.parametrize("H, Hkv, tail", [(7, 1, 40), (6, 2, 150), (6, 2, 1)])
def test_prompt_tail_runs_dense(H, Hkv, tail, device):
    """The prompt's last `dense_tail` rows attend every key (the dense reference); the chunk's
    rows before them run sparse as a chunk of their own (pattern from their own last queries),
    also when the tail starts in an earlier chunk; rows below the threshold attend densely too
    (tail 150: dense, sparse and tail rows in one chunk). On CUDA: the Triton estimator and
    kernel for the sparse rows, the dense GPU path for the tail."""
    D, B, total, chunks = 64, 16, 301, [100, 100, 101]
    rotary = RotaryEmbedding(D, 10000.0)
    g = torch.Generator().manual_seed(tail)
    q, k, v = (torch.randn(total, h, D, generator=g) for h in (H, Hkv, Hkv))
    kernel = "portable" if device == "cpu" else "triton"
    cfg = SparseConfig(threshold=120, vertical_size=20, slash_size=12, last_q=32, block_size=B,
                       sink_tokens=4, local_diagonals=8, dense_tail=tail)
    backend = sparse_backend(RotaryEmbedding(D, 10000.0).to(device), D, cfg, kernel=kernel)
    cache = KVCache(1, Hkv, D, num_blocks=40, block_size=8, dtype=torch.float32, device=device)
    slots = SeqSlots(block_table=list(range(39, 0, -1)), block_size=8)
    tol = dict(atol=3e-5, rtol=1e-5) if device == "cpu" else dict(atol=5e-3, rtol=5e-3)   # TF32 dots
    cos, sin = rotary.cos_sin(torch.arange(total), torch.float32)
    qr, kr = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    sparse_rows = 0
    for start, n, out, ran_sparse in feed_prompt(backend, q, k, v, chunks, cache, slots, total, device):
        m = start + n
        a, b = expected_sparse_rows(start, n, cfg.threshold, total, tail) or (n, n)
        mask = causal_mask(torch.arange(start, m), torch.arange(m)).expand(H, n, m).clone()
        assert ran_sparse == (a < b)
        if a < b:        # rows [a, b) ran sparse, by their pattern
            pattern = backend.pattern.last_pattern.to("cpu")
            mask[:, a:b, :start + b] = vertical_slash_mask(pattern, b - a, start + a)
            sparse_rows += b - a
        ref, _ = reference_attention(qr[start:m], kr[:m], v[:m], mask, D ** -0.5)
        torch.testing.assert_close(out.double(), ref, **tol)
        d = max(b, min(n, total - tail - start))
        if d < n:   # the tail itself: exactly dense
            dense, _ = reference_attention(qr[start + d:m], kr[:m], v[:m],
                                           causal_mask(torch.arange(start + d, m), torch.arange(m)), D ** -0.5)
            torch.testing.assert_close(out[d:].double(), dense, **tol)
    assert backend.pattern.stats.dense_tail_rows == tail and sparse_rows > 0


def test_dense_tail_config_is_checked():
    with pytest.raises(ValueError, match="dense_tail"):
        SparseConfig(dense_tail=-1)
