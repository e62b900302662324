"""DCA decode with lengths and offsets on the device (the CUDA-graph body) equals the eager DCA
backend, one new token per sequence: every part kind (intra only; intra + succ; intra + succ +
inter; intra + inter for rows past the local window), chunk boundaries, YaRN on and off, GQA
ratios, padding rows, the FP8 cache. On the CPU the Triton kernels run in the interpreter."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"      # before triton.jit runs (see test_decode_kernel.py)

pytest.importorskip("triton")

from backends import dca_backend, dense_backend, sparse_backend  # noqa: E402
from turboctx.attention.backend import AttentionBatch, SeqChunk  # noqa: E402
from turboctx.attention.dca import DCAConfig, plan_parts  # noqa: E402
from turboctx.attention.dca import DCAGraphDecode  # noqa: E402
from turboctx.attention.ops import merge_parts  # noqa: E402
from turboctx.attention.rope import RopeGraphDecode  # noqa: E402
from turboctx.attention.rotary import RotaryEmbedding  # noqa: E402
from turboctx.kv_cache import KVCache, SeqSlots  # noqa: E402
from turboctx.kv_cache.fp8 import FP8_DTYPE, quantize  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CHUNK, LOCAL = 64, 16          # chunk_len 48
BLOCK = 16


def _positions_by_kind():
    """Decode positions that give every plan shape (checked against plan_parts)."""
    cfg = DCAConfig(CHUNK, LOCAL, 4096)
    pos = [0, 5, 47,            # chunk 0: intra only
           48, 50, 63,          # chunk 1, r < local: intra + succ
           70, 95,              # chunk 1, far: intra + inter over chunk 0
           96, 100, 150,        # chunk 2, near: intra + succ + inter
           170, 191, 200]       # chunk 3/4, far and near
    kinds = {tuple(p[2] for p in plan_parts(cfg, x, 1)) for x in pos}
    assert kinds == {(0,), (0, 1), (0, 2), (0, 1, 2)}, kinds
    return pos


# every GQA ratio (1:1, 4:1, 7:1, 3:1), YaRN on and off: each case runs the Triton interpreter on
# the CPU for ~10 s, so the two axes are covered side by side rather than crossed
@pytest.mark.parametrize("H, Hkv, D, yarn, fp8", [(4, 4, 32, False, False), (8, 2, 64, True, False),
                                                  (14, 2, 64, False, False), (9, 3, 64, True, False),
                                                  (8, 2, 64, True, True)])
def test_graph_dca_decode_equals_eager(H, Hkv, D, yarn, fp8):
    torch.manual_seed(H * D + yarn)
    pos = _positions_by_kind()
    # YaRN active from position 64 on when the trained length is 64
    cfg = DCAConfig(CHUNK, LOCAL, 64 if yarn else 4096, yarn_scaling=yarn)
    rotary = RotaryEmbedding(D, 10000.0).to(DEVICE)
    eager = dca_backend(rotary, D, cfg)
    graph = eager.graph_decode()
    B = len(pos) + 2                               # two padding rows at the end
    per_seq = 256 // BLOCK                         # blocks per sequence, one run each
    storage = FP8_DTYPE if fp8 else None           # FP8: both paths read the same e4m3 values
    caches = [KVCache(1, Hkv, D, per_seq * B, BLOCK, torch.float32, DEVICE, storage) for _ in range(2)]
    base = torch.randn(1, Hkv, per_seq * B * BLOCK, D, device=DEVICE)
    for c in caches:                               # the same old keys/values in both caches
        if fp8:
            (c.k[:], c.k_scale[:]), (c.v[:], c.v_scale[:]) = quantize(base), quantize(base.flip(-1))
        else:
            c.k.copy_(base)
            c.v.copy_(base.flip(-1))
    q = torch.randn(B, H, D, device=DEVICE)
    k, v = torch.randn(B, Hkv, D, device=DEVICE), torch.randn(B, Hkv, D, device=DEVICE)

    # eager: one sequence per row, each its own consecutive block run
    slots = [SeqSlots(list(range(i * per_seq, (i + 1) * per_seq)), BLOCK) for i in range(len(pos))]
    seqs = [SeqChunk(i, i + 1, p, slots[i]) for i, p in enumerate(pos)]
    tpos = torch.tensor(pos, device=DEVICE)
    batch = AttentionBatch(seqs, tpos, caches[0])
    eager.prepare(batch, torch.float32)
    want = eager.forward(0, q[:len(pos)], k[:len(pos)], v[:len(pos)], batch)

    # graph body: lengths / first slots on the device; padding rows have length 0
    gpos = torch.tensor(pos + [0, 0], device=DEVICE)
    lens = torch.tensor([p + 1 for p in pos] + [0, 0], device=DEVICE)
    starts = torch.tensor([s.contiguous_start for s in slots] + [0, 0], device=DEVICE)
    gbatch = AttentionBatch([], gpos, caches[1], extras=graph.step_extras(gpos, lens, starts, torch.float32, 3))
    got = graph.forward(0, q, k, v, gbatch)

    assert (got[:len(pos)] - want).abs().max() < 2e-5, (got[:len(pos)] - want).abs().max()
    assert got[len(pos):].abs().max() == 0                       # padding rows: nothing
    for a, b in zip(caches[0].parts(), caches[1].parts()):       # same slots written, nothing else
        assert torch.equal(a, b) or (a.float() - b.float()).abs().max() < 1e-6


def test_merge_parts_is_exact_and_empty_rows_are_zero():
    torch.manual_seed(0)
    o = [torch.randn(3, 2, 8) for _ in range(3)]
    lse = [torch.randn(3, 2) for _ in range(3)]
    lse[1][0] = float("-inf")                                   # part 1 empty for row 0
    for part in lse:
        part[2] = float("-inf")                                 # row 2: no keys at all
    got = merge_parts(o, lse)
    w = torch.softmax(torch.stack(lse[:])[:, :2], dim=0)        # [P, 2, H]
    want = sum(w[i][..., None] * o[i][:2] for i in range(3))
    assert (got[:2] - want).abs().max() < 1e-6
    assert got[2].abs().max() == 0


def test_graph_decode_form_of_each_backend():
    """The positions decide decode in graphs: sparse prefill decodes as the positions it runs on."""
    rotary = RotaryEmbedding(32, 10000.0)
    cfg = DCAConfig(CHUNK, LOCAL, 4096)
    assert isinstance(dense_backend(rotary, 32).graph_decode(), RopeGraphDecode)
    assert isinstance(sparse_backend(rotary, 32).graph_decode(), RopeGraphDecode)
    assert isinstance(dca_backend(rotary, 32, cfg).graph_decode(), DCAGraphDecode)
    assert isinstance(sparse_backend(rotary, 32, dca=cfg).graph_decode(), DCAGraphDecode)
    no_yarn = dca_backend(rotary, 32, DCAConfig(CHUNK, LOCAL, 64, yarn_scaling=False))
    assert isinstance(no_yarn.graph_decode(), DCAGraphDecode)
