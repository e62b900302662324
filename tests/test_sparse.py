"""Vertical-slash sparse prefill: config file, pattern estimation, kernels vs reference, backend."""
from __future__ import annotations

import json

import pytest
import torch

from turboctx.attention.backend import AttentionBatch, SeqChunk
from turboctx.attention.dense import DenseAttentionBackend
from turboctx.attention.reference import causal_mask, reference_attention
from turboctx.attention.sparse import SparseAttentionBackend
from turboctx.attention.sparse_attention import (causal_entries, count_attended,
                                                 reference_vertical_slash, slash_block_table,
                                                 vertical_slash_attention_flex,
                                                 vertical_slash_attention_portable,
                                                 vertical_slash_mask)
from turboctx.attention.sparse_config import (SparseConfig, load_sparse_attention_config,
                                              write_sparse_attention_config)
from turboctx.attention.sparse_pattern import VSPattern, diagonal_sums, estimate_vertical_slash
from turboctx.kv_cache import KVCache, SeqSlots
from turboctx.models.layers import RotaryEmbedding, apply_rotary

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _qkv(n, start, H, Hkv, D, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    m = start + n
    q = torch.randn(n, H, D, generator=g)
    k = torch.randn(Hkv, m, D, generator=g)
    v = torch.randn(Hkv, m, D, generator=g)
    return q.to(device, dtype), k.to(device, dtype), v.to(device, dtype)


def _random_pattern(H, m, n_vert, n_slash, seed=0):
    g = torch.Generator().manual_seed(seed)
    vert = torch.full((H, n_vert), -1, dtype=torch.int64)
    slash = torch.full((H, n_slash), -1, dtype=torch.int64)
    for h in range(H):   # heads with different counts exercise the -1 padding
        nv, ns = max(1, n_vert - h), max(1, n_slash - 2 * h)
        vert[h, :nv] = torch.randperm(m, generator=g)[:nv].sort().values
        slash[h, :ns] = torch.randperm(m, generator=g)[:ns].sort().values
    return VSPattern(vert, slash)


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
    (dict(local_diagonals=0), "local_diagonals"), (dict(kernel="triton"), "kernel"),
    (dict(head_budgets=[[(10, 0)]]), "layer 0 head 0"),
])
def test_config_errors_say_what_to_change(kwargs, words):
    with pytest.raises(ValueError, match=words):
        SparseConfig(**kwargs)


# ---------------------------------------------------------------- pattern estimation

def test_diagonal_sums_brute_force():
    p = torch.rand(3, 5, 17)
    got = diagonal_sums(p, 10)
    want = torch.zeros(3, 17)
    for i in range(5):
        for j in range(11 + i):
            want[:, 10 + i - j] += p[:, i, j]
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("H, Hkv", [(7, 1), (6, 2)])
def test_estimation_finds_planted_column_and_diagonal(H, Hkv):
    m, D, L = 411, 64, 64
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
    pat = estimate_vertical_slash(q, k, m - L, [(1, 2)] * H, scale=1.0, sink_tokens=0,
                                  local_diagonals=1)
    for h in range(H):
        assert pat.vertical[h].tolist() == [cols[h]]
        assert pat.slash[h].tolist() == [0, diags[h]]     # diagonal 0 is always kept
    # forced columns and diagonals are always there and count as part of larger budgets
    pat = estimate_vertical_slash(q, k, m - L, [(40, 120)] * H, scale=1.0, sink_tokens=30,
                                  local_diagonals=100)
    for h in range(H):
        vert, slash = pat.vertical[h].tolist(), pat.slash[h].tolist()
        assert set(range(30)) <= set(vert) and cols[h] in vert and len(vert) == 40
        assert set(range(100)) <= set(slash) and diags[h] in slash and len(slash) == 120


# ---------------------------------------------------------------- kernels vs reference

def test_slash_block_table_brute_force():
    n, start, B = 77, 45, 16
    pat = _random_pattern(3, start + n, 4, 6, seed=3)
    sel = slash_block_table(pat.slash, n, start, B)
    want = torch.zeros_like(sel)
    for h in range(3):
        for d in pat.slash[h].tolist():
            for i in range(n):
                if d >= 0 and start + i - d >= 0:
                    want[h, i // B, (start + i - d) // B] = True
    assert torch.equal(sel, want)


@pytest.mark.parametrize("H, Hkv, D, n, start, B", [
    (7, 1, 64, 133, 0, 16), (7, 1, 64, 97, 250, 32), (6, 2, 128, 150, 217, 16),
    (6, 2, 64, 64, 300, 64),
])
def test_portable_equals_reference_on_its_set(H, Hkv, D, n, start, B):
    q, k, v = _qkv(n, start, H, Hkv, D, seed=n)
    pat = _random_pattern(H, start + n, 9, 7, seed=start)
    scale = D ** -0.5
    ref_o, ref_l = reference_vertical_slash(q, k, v, pat, start=start, block_size=B, scale=scale)
    out, lse = vertical_slash_attention_portable(q, k, v, pat, start=start, block_size=B, scale=scale)
    torch.testing.assert_close(out.double(), ref_o, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), ref_l, atol=2e-5, rtol=1e-5)
    mask = vertical_slash_mask(pat, n, start, B)
    assert torch.equal(count_attended(pat, n, start, B), mask.sum((1, 2)))
    assert mask.sum() < H * causal_entries(n, start)


def test_everything_selected_equals_dense():
    H, Hkv, D, n, start, B = 6, 2, 64, 101, 180, 16
    m = start + n
    q, k, v = _qkv(n, start, H, Hkv, D, seed=7)
    all_cols = torch.arange(m).expand(H, m)
    pat = VSPattern(all_cols.clone(), all_cols.clone())
    out, lse = vertical_slash_attention_portable(q, k, v, pat, start=start, block_size=B, scale=0.125)
    mask = causal_mask(start + torch.arange(n), torch.arange(m))
    ref_o, ref_l = reference_attention(q, k.transpose(0, 1), v.transpose(0, 1), mask, 0.125)
    torch.testing.assert_close(out.double(), ref_o, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), ref_l, atol=1e-5, rtol=1e-5)
    assert int(count_attended(pat, n, start, B).sum()) == H * causal_entries(n, start)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_mask_mods_match_reference_eager_cpu():
    """The FlexAttention path's masks (eager flex uses mask_mod only, not the blocks)."""
    H, Hkv, D, n, start, B = 6, 2, 32, 70, 90, 16
    q, k, v = _qkv(n, start, H, Hkv, D, seed=11)
    pat = _random_pattern(H, start + n, 5, 4, seed=2)
    ref_o, ref_l = reference_vertical_slash(q, k, v, pat, start=start, block_size=B, scale=0.2)
    out, lse = vertical_slash_attention_flex(q, k, v, pat, start=start, block_size=B, scale=0.2,
                                             compiled=False)
    torch.testing.assert_close(out.double(), ref_o, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), ref_l, atol=2e-5, rtol=1e-5)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("H, Hkv, D, n, start, B", [
    (28, 4, 128, 1000, 3000, 64), (7, 1, 64, 517, 1200, 128), (6, 2, 128, 2048, 0, 128),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flex_equals_portable_gpu(H, Hkv, D, n, start, B, dtype):
    q, k, v = _qkv(n, start, H, Hkv, D, seed=5, dtype=dtype, device="cuda")
    pat = _random_pattern(H, start + n, 200, 150, seed=9).to("cuda")
    o1, l1 = vertical_slash_attention_flex(q, k, v, pat, start=start, block_size=B, scale=D ** -0.5)
    o2, l2 = vertical_slash_attention_portable(q, k, v, pat, start=start, block_size=B, scale=D ** -0.5)
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-4
    torch.testing.assert_close(o1.float(), o2.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(l1, l2, atol=tol, rtol=tol)


# ---------------------------------------------------------------- backend through the KV cache

def _run_chunks(backend, q, k, v, chunks, cache, slots, rotary):
    outs = []
    start = 0
    for n in chunks:
        pos = torch.arange(start, start + n)
        batch = AttentionBatch([SeqChunk(0, n, start, slots)], pos, cache)
        backend.prepare(batch, q.dtype)
        outs.append(backend.forward(0, q[start:start + n], k[start:start + n], v[start:start + n], batch))
        yield start, n, outs[-1]
        start += n


@pytest.mark.parametrize("H, Hkv", [(7, 1), (6, 2)])
def test_backend_chunked_prefill_equals_reference_of_its_set(H, Hkv):
    D, B, total, chunks = 64, 16, 301, [100, 100, 101]
    rotary = RotaryEmbedding(D, 10000.0)
    g = torch.Generator().manual_seed(H)
    q, k, v = (torch.randn(total, h, D, generator=g) for h in (H, Hkv, Hkv))
    cfg = SparseConfig(threshold=150, vertical_size=20, slash_size=12, last_q=32, block_size=B,
                       sink_tokens=4, local_diagonals=8, kernel="portable")
    backend = SparseAttentionBackend(rotary, D, cfg, record_recall=True)
    cache = KVCache(1, Hkv, D, num_blocks=40, block_size=8, dtype=torch.float32, device="cpu")
    slots = SeqSlots(block_table=list(range(39, 0, -1)), block_size=8)   # gathered, not a view
    cos, sin = rotary.cos_sin(torch.arange(total), torch.float32)
    qr, kr = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    for start, n, out in _run_chunks(backend, q, k, v, chunks, cache, slots, rotary):
        m = start + n
        if m < cfg.threshold:     # dense below the threshold
            mask = causal_mask(torch.arange(start, m), torch.arange(m))
        else:
            mask = vertical_slash_mask(backend.last_pattern, n, start, B)
            assert mask.sum() < H * causal_entries(n, start)
        ref, _ = reference_attention(qr[start:m], kr[:m], v[:m], mask, D ** -0.5)
        torch.testing.assert_close(out.double(), ref, atol=3e-5, rtol=1e-5)
    st = backend.stats
    assert (st.sparse_chunks, st.dense_chunks) == (2, 1)
    assert 0 < st.density < 1 and st.estimate_s > 0
    assert set(st.recall) == {0} and bool(((st.recall[0] > 0) & (st.recall[0] <= 1 + 1e-5)).all())
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
    for name, backend in (("sparse", SparseAttentionBackend(rotary, D, cfg)),
                          ("dense", DenseAttentionBackend(rotary, D))):
        cache = KVCache(1, Hkv, D, num_blocks=26, block_size=8, dtype=torch.float32, device="cpu")
        slots = SeqSlots(block_table=list(range(26)), block_size=8)
        outs[name] = torch.cat([o for _, _, o in _run_chunks(backend, q, k, v, chunks, cache, slots, rotary)])
    torch.testing.assert_close(outs["sparse"], outs["dense"], atol=1e-5, rtol=1e-5)
