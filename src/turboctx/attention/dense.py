"""Dense causal attention over the KV cache (exact)."""
from __future__ import annotations

import torch

from turboctx.attention.backend import AttentionBackend, AttentionBatch
from turboctx.attention.kernels import attend, merge_attention
from turboctx.kv_cache import read_kv, write_kv
from turboctx.models.layers import RotaryEmbedding, apply_rotary


class DenseAttentionBackend(AttentionBackend):
    name = "dense"

    def __init__(self, rotary: RotaryEmbedding, head_dim: int):
        self.rotary = rotary
        self.scale = head_dim ** -0.5

    def prepare(self, batch: AttentionBatch, dtype: torch.dtype) -> None:
        batch.extras["cos_sin"] = self.rotary.cos_sin(batch.positions, dtype)

    def forward(self, layer, q, k, v, batch: AttentionBatch) -> torch.Tensor:
        cos, sin = batch.extras["cos_sin"]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        k_cache, v_cache = batch.kv_cache.k[layer], batch.kv_cache.v[layer]
        if len(batch.seqs) == 1:     # the long-prompt case: no scatter into a batch buffer
            return self.attend_seq(q, k, v, batch.seqs[0], k_cache, v_cache)
        out = torch.empty_like(q)
        for s in batch.seqs:
            out[s.rows] = self.attend_seq(q[s.rows], k[s.rows], v[s.rows], s, k_cache, v_cache)
        return out

    def attend_seq(self, q, k, v, s, k_cache, v_cache) -> torch.Tensor:
        """q: [n, H, D], k/v: [n, Hkv, D] (rotated) of one sequence -> [n, H, D]."""
        start, n = s.start_pos, q.shape[0]
        write_kv(k_cache, s.slots, start, k)
        write_kv(v_cache, s.slots, start, v)
        if n == 1:  # decode: one query over the whole cache, no mask needed
            keys, vals = read_kv(k_cache, s.slots, 0, start + 1), read_kv(v_cache, s.slots, 0, start + 1)
            return attend(q, keys, vals, causal=False, scale=self.scale)[0]
        # The chunk against itself (causal square) ...
        out, lse = attend(q, k.transpose(0, 1), v.transpose(0, 1), causal=True, scale=self.scale)
        if start == 0:
            return out
        # ... merged with the chunk against every older key (no mask).
        keys, vals = read_kv(k_cache, s.slots, 0, start), read_kv(v_cache, s.slots, 0, start)
        out_old, lse_old = attend(q, keys, vals, causal=False, scale=self.scale)
        return merge_attention(out, lse, out_old, lse_old)[0]
