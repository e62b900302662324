"""Dual Chunk Attention: config, positions, DCA == dense inside one chunk, backend == reference."""
from __future__ import annotations

import pytest
import torch

from backends import dca_backend, dense_backend
from turboctx.attention.backend import AttentionBatch, SeqChunk
from turboctx.attention.dca import DCAConfig, plan_parts
from turboctx.attention.reference import (dca_position_matrices, dca_relative_positions,
                                          reference_dca_attention, yarn_logit_scale)
from turboctx.attention.rotary import RotaryEmbedding
from turboctx.config import AttentionConfig, ModelArchitecture
from turboctx.config.engine import resolve_dca
from turboctx.errors import InvalidRequestError
from turboctx.kv_cache import KVCache, SeqSlots

NUM_LAYERS, BLOCK = 2, 4


def _arch(max_pos, dca=None):
    return ModelArchitecture(family="llama", vocab_size=10, hidden_size=64, intermediate_size=64,
                             num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1,
                             head_dim=64, max_position_embeddings=max_pos,
                             dual_chunk_attention_config=dca)


# ---------------------------------------------------------------- config

def test_resolve_reads_qwen_1m_config():
    cfg = resolve_dca(AttentionConfig(), _arch(1010000, {
        "chunk_size": 262144, "local_size": 8192, "original_max_position_embeddings": 262144}))
    assert (cfg.chunk_size, cfg.local_size, cfg.original_max_position_embeddings,
            cfg.yarn_scaling) == (262144, 8192, 262144, True)


def test_resolve_vllm_defaults_and_no_yarn_without_original_length():
    cfg = resolve_dca(AttentionConfig(), _arch(32768, {}))
    assert (cfg.chunk_size, cfg.local_size, cfg.yarn_scaling) == (8192, 1024, False)


def test_resolve_defaults_from_trained_length_and_options():
    assert resolve_dca(AttentionConfig(), _arch(8192)) is None     # no DCA config: off unless asked
    cfg = resolve_dca(AttentionConfig(dca=True), _arch(8192))      # SmolLM2: trained to 8192
    assert (cfg.chunk_size, cfg.local_size, cfg.original_max_position_embeddings,
            cfg.chunk_len, cfg.yarn_scaling) == (8192, 1024, 8192, 7168, True)
    cfg = resolve_dca(AttentionConfig(dca=True, dca_chunk_size=4096), _arch(8192))
    assert (cfg.chunk_size, cfg.local_size, cfg.yarn_scaling) == (4096, 512, True)
    with pytest.raises(InvalidRequestError, match="dca_chunk_size given but DCA is off"):
        resolve_dca(AttentionConfig(dca=False, dca_chunk_size=4096), _arch(8192))


@pytest.mark.parametrize("kwargs, words", [
    (dict(chunk_size=8192, local_size=8192, original_max_position_embeddings=8192), "local_size"),
    (dict(chunk_size=16384, local_size=1024, original_max_position_embeddings=8192), "chunk_size <="),
    (dict(chunk_size=1, local_size=0, original_max_position_embeddings=8192), "chunk_size"),
])
def test_config_errors_say_what_to_change(kwargs, words):
    with pytest.raises(ValueError, match=words):
        DCAConfig(**kwargs)
    with pytest.raises(InvalidRequestError, match=words):
        resolve_dca(AttentionConfig(dca=True, dca_chunk_size=kwargs["chunk_size"],
                                    dca_local_size=kwargs["local_size"]), _arch(8192))


def test_yarn_factor():
    cfg = DCAConfig(8192, 1024, 8192)
    assert cfg.yarn_logit_scale(8192) == 1.0 and cfg.yarn_logit_scale(4000) == 1.0
    assert cfg.yarn_logit_scale(65536) == pytest.approx(yarn_logit_scale(65536, 8192))
    assert cfg.yarn_logit_scale(65536) == pytest.approx((0.1 * torch.log(torch.tensor(8.0)).item() + 1) ** 2)
    assert DCAConfig(8192, 1024, 8192, yarn_scaling=False).yarn_logit_scale(65536) == 1.0


# ---------------------------------------------------------------- positions (the reference setting)

def test_positions_match_the_reference_setting():
    """Keys at j mod 7168; a query at i mod 7168 toward its own chunk, at 7168 + i mod 7168
    toward the previous chunk while i mod 7168 < 1024 and at 8191 otherwise, 8191 toward older."""
    cl = 7168
    i = torch.tensor([3 * cl + 5, 3 * cl + 1023, 3 * cl + 1024, 3 * cl + 7000])
    j = torch.tensor([3 * cl + 2, 2 * cl + 7, 2 * cl + 7100, cl + 3, 11])
    qp, kp, mask = dca_position_matrices(i, j, 8192, 1024)
    assert (kp == (j % cl)[None]).all() and mask[:, 1:].all()
    r = i % cl
    assert qp[:, 0].tolist() == r.tolist()
    assert qp[:, 1].tolist() == [cl + 5, cl + 1023, 8191, 8191]
    assert (qp[:, 3:] == 8191).all()
    rel = dca_relative_positions(torch.arange(40000, 43000, 97), torch.arange(43000), 8192, 1024)
    assert rel.max() == 8191 and rel.min() == -1   # -1: a masked (future) key


def test_plan_covers_each_query_keys_exactly_once():
    cfg = DCAConfig(20, 6, 20)
    for start, n in [(0, 1), (0, 50), (13, 1), (13, 29), (28, 14), (41, 3), (70, 1)]:
        seen = torch.zeros(n, start + n, dtype=torch.int64)
        for lo, hi, _, k0, k1, causal in plan_parts(cfg, start, n):
            assert not causal or (k0, k1) == (start + lo, start + hi)
            block = torch.ones(hi - lo, k1 - k0, dtype=torch.int64)
            seen[lo:hi, k0:k1] += block.tril() if causal else block
        want = (torch.arange(start + n)[None] <= torch.arange(start, start + n)[:, None]).long()
        assert torch.equal(seen, want)


# ---------------------------------------------------------------- driving the backend like the engine

def _slots(num_tokens, first_block, scatter):
    nb = -(-num_tokens // BLOCK)
    blocks = list(range(first_block, first_block + nb))
    if scatter:   # a non-consecutive block table: reads gather by slot index
        blocks = blocks[::2] + blocks[1::2]
    return SeqSlots(block_table=blocks, block_size=BLOCK)


def _run(backend, data, schedule, Hkv, D):
    """data: per sequence (q [T,H,D], k [T,Hkv,D], v). schedule: steps of [(seq, n_new)].
    Returns per sequence the outputs of every layer, [L, T, H, D], in position order."""
    total = sum(d[0].shape[0] for d in data)
    cache = KVCache(NUM_LAYERS, Hkv, D, num_blocks=-(-total // BLOCK) + len(data) + 2,
                    block_size=BLOCK, dtype=torch.float32, device="cpu")
    slots, first = [], 0
    for sid, (q, _, _) in enumerate(data):
        slots.append(_slots(q.shape[0], first, scatter=sid % 2 == 1))
        first += len(slots[-1].block_table)
    done = [0] * len(data)
    outs = [torch.zeros(NUM_LAYERS, *d[0].shape) for d in data]
    for step in schedule:
        seqs, qs, ks, vs, pos, row = [], [], [], [], [], 0
        for sid, n in step:
            a = done[sid]
            seqs.append(SeqChunk(row, row + n, a, slots[sid]))
            for lst, x in zip((qs, ks, vs), data[sid]):
                lst.append(x[a:a + n])
            pos.append(torch.arange(a, a + n))
            row += n
        batch = AttentionBatch(seqs, torch.cat(pos), cache)
        backend.prepare(batch, torch.float32)
        for layer in range(NUM_LAYERS):   # layer l sees its inputs scaled by (l + 1)
            o = backend.forward(layer, torch.cat(qs) * (layer + 1), torch.cat(ks) * (layer + 1),
                                torch.cat(vs) * (layer + 1), batch)
            for s, (sid, n) in zip(seqs, step):
                outs[sid][layer, done[sid]:done[sid] + n] = o[s.rows]
        for sid, n in step:
            done[sid] += n
    return outs


def _random(T, H, Hkv, D, gen):
    return (torch.randn(T, H, D, generator=gen), torch.randn(T, Hkv, D, generator=gen),
            torch.randn(T, Hkv, D, generator=gen))


def _one_seq_schedule(prefill, decode):
    return [[(0, n)] for n in prefill] + [[(0, 1)]] * decode


def test_dca_equals_dense_within_one_chunk():
    H, Hkv, D = 6, 2, 64
    rotary = RotaryEmbedding(D, theta=500.0)
    cfg = DCAConfig(chunk_size=64, local_size=8, original_max_position_embeddings=64)  # chunk_len 56
    gen = torch.Generator().manual_seed(0)
    data = [_random(55, H, Hkv, D, gen), _random(30, H, Hkv, D, gen)]
    schedule = [[(0, 17), (1, 30)], [(0, 20)]] + [[(0, 1)]] * 18
    dca = _run(dca_backend(rotary, D, cfg), data, schedule, Hkv, D)
    dense = _run(dense_backend(rotary, D), data, schedule, Hkv, D)
    for a, b in zip(dca, dense):
        assert (a - b).abs().max().item() <= 1e-5


CASES = [  # H, Hkv, D, chunk_size, local_size, prefill chunks, decode steps
    (4, 4, 64, 16, 4, [61], 0),              # one-shot prefill over 6 DCA chunks, MHA
    (6, 2, 128, 24, 8, [10, 23, 30], 5),     # boundaries inside DCA chunks, 3:1
    (7, 1, 64, 20, 5, [15, 15, 30, 7], 6),   # boundaries on and across chunk edges, 7:1
    (14, 2, 64, 33, 0, [40, 41], 4),         # no local window, 7:1
    (3, 1, 128, 9, 8, [5, 9, 3], 4),         # chunk_len 1: every token its own chunk
    (4, 2, 64, 12, 3, [1], 30),              # one prompt token, then decode only
]


def _want(data, cs, local, rotary, D, layer=0):
    """The reference with YaRN's scale from each query's own position."""
    q, k, v = (x * (layer + 1) for x in data)
    T = q.shape[0]
    pos = torch.arange(T)
    mult = torch.tensor([yarn_logit_scale(x, cs) for x in range(1, T + 1)], dtype=torch.float64)
    return reference_dca_attention(q, k, v, pos, pos, cs, local, rotary.inv_freq, D ** -0.5,
                                   rotary.attention_scaling, mult)[0]


@pytest.mark.parametrize("H, Hkv, D, cs, local, prefill, decode", CASES)
def test_backend_matches_reference(H, Hkv, D, cs, local, prefill, decode):
    T = sum(prefill) + decode
    rotary = RotaryEmbedding(D, theta=500.0)
    cfg = DCAConfig(cs, local, cs, yarn_scaling=True)   # YaRN active past the chunk size
    gen = torch.Generator().manual_seed(T * 31 + H)
    data = [_random(T, H, Hkv, D, gen)]
    out = _run(dca_backend(rotary, D, cfg), data, _one_seq_schedule(prefill, decode), Hkv, D)[0]
    for layer in range(NUM_LAYERS):
        want = _want(data[0], cs, local, rotary, D, layer)
        assert (out[layer].double() - want).abs().max().item() < 1e-4


def test_batched_sequences():
    """A prefill and a decode in one step, a scattered block table."""
    H, Hkv, D, cs, local = 6, 2, 64, 16, 5
    rotary = RotaryEmbedding(D, theta=500.0)
    cfg = DCAConfig(cs, local, cs)
    gen = torch.Generator().manual_seed(7)
    data = [_random(45, H, Hkv, D, gen), _random(40, H, Hkv, D, gen)]
    schedule = [[(1, 30)], [(0, 20), (1, 1)], [(0, 25), (1, 1)]] + [[(1, 1)]] * 8
    out = _run(dca_backend(rotary, D, cfg), data, schedule, Hkv, D)
    for sid in (0, 1):
        want = _want(data[sid], cs, local, rotary, D)
        assert (out[sid][0].double() - want).abs().max().item() < 1e-4
