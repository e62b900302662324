"""Sparse prefill backend: vertical-slash attention above a length threshold, dense below.

Per prefill chunk and layer (when the sequence length at the chunk's end >= threshold):
estimate the pattern from the chunk's last `last_q` queries against all keys (sparse_pattern),
then attend only the selected set (sparse_attention). Decode steps and short sequences run the
dense path unchanged. Achieved density (attended / causal entries, over all heads and layers of
the sparse chunks) and pattern-estimation time accumulate in `self.stats` and are copied into
`batch.extras["sparse"]` each step; `record_recall` keeps each head's attention recall
exp(lse_sparse - lse_dense) at the last queries (what `turboctx calibrate` needs).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from turboctx.attention.backend import AttentionBatch
from turboctx.attention.dense import DenseAttentionBackend
from turboctx.attention.sparse_attention import (causal_entries, count_attended, slash_block_table,
                                                 vertical_slash_attention)
from turboctx.attention.sparse_config import SparseConfig
from turboctx.attention.sparse_pattern import estimate_vertical_slash
from turboctx.kv_cache import read_kv, write_kv


@dataclass
class SparseStats:
    sparse_chunks: int = 0         # (chunk, layer) pairs that ran sparse
    dense_chunks: int = 0          # prefill (chunk, layer) pairs that ran dense (below threshold)
    kept: float = 0.0              # attended entries summed over heads (sparse chunks only)
    total: float = 0.0             # causal entries summed over heads (sparse chunks only)
    estimate_s: float = 0.0        # wall time of pattern estimation (synced on CUDA if timing)
    attend_s: float = 0.0          # wall time of the sparse attention itself (same)
    recall: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [H] (record_recall)
    _kept_t: list = field(default_factory=list, repr=False)

    @property
    def density(self) -> float:
        """attended / causal entries over the sparse chunks (nan when none ran sparse)."""
        self.flush()
        return self.kept / self.total if self.total else float("nan")

    def flush(self) -> None:
        if self._kept_t:   # device counters summed lazily: no sync per layer
            self.kept += float(torch.stack([t.sum() for t in self._kept_t]).sum())
            self._kept_t.clear()


class SparseAttentionBackend(DenseAttentionBackend):
    name = "sparse"

    def __init__(self, rotary, head_dim: int, sparse_config: SparseConfig | None = None, *,
                 timing: bool = False, record_recall: bool = False):
        super().__init__(rotary, head_dim)
        self.config = sparse_config or SparseConfig()
        self.timing = timing                 # synchronize around the timed parts (benchmarks)
        self.record_recall = record_recall
        self.stats = SparseStats()
        self._layer = 0

    def reset_stats(self) -> None:
        self.stats = SparseStats()

    def prepare(self, batch: AttentionBatch, dtype: torch.dtype) -> None:
        super().prepare(batch, dtype)
        batch.extras["sparse"] = self.stats

    def forward(self, layer, q, k, v, batch: AttentionBatch) -> torch.Tensor:
        self._layer = layer   # attend_seq has no layer argument; budgets are per layer
        return super().forward(layer, q, k, v, batch)

    def use_sparse(self, start: int, n: int) -> bool:
        return n > 1 and start + n >= self.config.threshold

    def attend_seq(self, q, k, v, s, k_cache, v_cache) -> torch.Tensor:
        start, n = s.start_pos, q.shape[0]
        if not self.use_sparse(start, n):
            if n > 1:
                self.stats.dense_chunks += 1
            return super().attend_seq(q, k, v, s, k_cache, v_cache)
        write_kv(k_cache, s.slots, start, k)
        write_kv(v_cache, s.slots, start, v)
        m = start + n
        keys, vals = read_kv(k_cache, s.slots, 0, m), read_kv(v_cache, s.slots, 0, m)
        out, lse = self.sparse_chunk(self._layer, q, keys, vals, start)
        if self.record_recall:
            self._record_recall(q, keys, lse, start)
        return out

    def sparse_chunk(self, layer: int, q, keys, vals, start: int, q_select=None, k_select=None):
        """Estimate the pattern and attend. q: [n, H, D]; keys/vals: [Hkv, m, D], m = start + n.

        q_select/k_select (default q/keys): the tensors the pattern is estimated from; a DCA
        backend passes q/k rotated with continuous positions here and DCA-rotated q/keys to attend.
        """
        cfg, n, H = self.config, q.shape[0], q.shape[1]
        q_sel = q if q_select is None else q_select
        k_sel = keys if k_select is None else k_select
        L = min(cfg.last_q, n)
        t0 = self._now(q)
        pattern = estimate_vertical_slash(q_sel[-L:], k_sel, start + n - L, cfg.budgets(layer, H),
                                          scale=self.scale, sink_tokens=cfg.sink_tokens,
                                          local_diagonals=cfg.local_diagonals)
        sel = slash_block_table(pattern.slash, n, start, cfg.block_size)
        t1 = self._now(q)
        out, lse = vertical_slash_attention(q, keys, vals, pattern, start=start,
                                            block_size=cfg.block_size, scale=self.scale,
                                            kernel=cfg.kernel, sel=sel)
        t2 = self._now(q)
        st = self.stats
        st.sparse_chunks += 1
        st.estimate_s += t1 - t0
        st.attend_s += t2 - t1
        st._kept_t.append(count_attended(pattern, n, start, cfg.block_size, sel=sel))
        st.total += H * causal_entries(n, start)
        self.last_pattern = pattern
        return out, lse

    def _record_recall(self, q, keys, lse, start: int) -> None:
        """exp(lse_sparse - lse_dense) averaged over the last queries, per head."""
        n = q.shape[0]
        L = min(self.config.last_q, n)
        p0 = start + n - L
        Hkv, m, D = keys.shape
        qf = q[-L:].view(L, Hkv, -1, D).permute(1, 2, 0, 3).reshape(Hkv, -1, D).float()
        s = torch.matmul(qf, keys.float().transpose(1, 2)) * self.scale
        s = s.view(q.shape[1], L, m)
        future = torch.arange(m, device=q.device)[None, :] > torch.arange(p0, p0 + L, device=q.device)[:, None]
        dense = torch.logsumexp(s.masked_fill_(future, float("-inf")), -1)     # [H, L]
        rec = torch.exp(lse[-L:].transpose(0, 1) - dense).mean(-1)
        self.stats.recall[self._layer] = rec

    def _now(self, x: torch.Tensor) -> float:
        if self.timing and x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        return time.perf_counter()
