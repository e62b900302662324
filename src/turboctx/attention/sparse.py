"""Sparse prefill backend: vertical-slash attention above a length threshold, dense below.

Per prefill chunk and layer, for the chunk's rows at positions >= threshold that are not among
the prompt's last `dense_tail` tokens (`sparse_rows`): estimate the pattern from their last
`last_q` queries against all keys (sparse_pattern), then attend only the selected set
(sparse_attention). The chunk's other rows, decode steps and short sequences run the dense path
unchanged. `self.stats` accumulates the number of sparse (chunk, layer) pairs, the
achieved density (attended / causal entries over all heads of the sparse chunks), and the time
spent estimating patterns and attending: with `timing=True` (benchmarks) through CUDA events on
the GPU, read once at the end; on the CPU always, with the wall clock. `record_recall` keeps
each head's attention recall exp(lse_sparse - lse_dense) at the last queries (calibration).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch

from turboctx.attention.backend import AttentionBatch, SeqChunk
from turboctx.attention.dense import DenseAttentionBackend
from turboctx.attention.sparse_attention import vertical_slash_attention
from turboctx.attention.sparse_blocks import causal_entries, count_attended
from turboctx.attention.sparse_config import SparseConfig
from turboctx.attention.sparse_pattern import VSPattern, estimate_vertical_slash
from turboctx.kv_cache import read_kv, write_kv


@dataclass
class SparseStats:
    sparse_chunks: int = 0         # (chunk, layer) pairs that ran sparse
    dense_chunks: int = 0          # prefill (chunk, layer) pairs that ran dense (below threshold)
    dense_tail_rows: int = 0       # query rows x layers of the prompts' dense tails (dense_tail)
    kept: float = 0.0              # attended entries summed over heads (where counted)
    total: float = 0.0             # causal entries summed over heads (same chunks)
    recall: dict[int, list] = field(default_factory=dict)  # layer -> [H] per sparse chunk (record_recall)
    chunks: dict[int, list] = field(default_factory=dict, repr=False)  # chunk start -> [kept, total]
    head_kept: dict[int, list] = field(default_factory=dict, repr=False)  # layer -> [([H], total)] (record_recall; after flush)
    _pending: list = field(default_factory=list, repr=False)  # (start, layer | None, pattern, n)
    _seconds: dict = field(default_factory=lambda: {"estimate": 0.0, "attend": 0.0}, repr=False)
    _events: list = field(default_factory=list, repr=False)   # (what, start, end) CUDA events

    @property
    def density(self) -> float:
        """attended / causal entries over the counted sparse chunks (nan when none)."""
        self.flush()
        return self.kept / self.total if self.total else float("nan")

    @property
    def estimate_s(self) -> float:
        """Time spent estimating patterns (scores, top-k)."""
        self.flush()
        return self._seconds["estimate"]

    @property
    def attend_s(self) -> float:
        """Time spent in the sparse attention itself."""
        self.flush()
        return self._seconds["attend"]

    def density_by_chunk(self) -> dict[int, float]:
        """Chunk start position -> density of that chunk over all layers and heads."""
        self.flush()
        return {s: kt[0] / kt[1] for s, kt in sorted(self.chunks.items())}

    def flush(self) -> None:
        """Device counters and events are summed lazily: no sync per layer."""
        if self._pending:   # counted here, after the timed work, not inside it
            kept = [count_attended(pat, n, start) for start, _, pat, n in self._pending]   # [H] each
            sums = torch.stack([k.sum() for k in kept]).tolist()
            for (start, layer, _, n), k, v in zip(self._pending, kept, sums):
                self.kept += v
                self.chunks[start][0] += v
                if layer is not None:
                    self.head_kept.setdefault(layer, []).append((k.cpu(), causal_entries(n, start)))
            self._pending.clear()
        if self._events:
            self._events[-1][2].synchronize()
            for what, a, b in self._events:
                self._seconds[what] += a.elapsed_time(b) / 1e3
            self._events.clear()

    def as_dict(self) -> dict:
        return {"sparse_chunk_layers": self.sparse_chunks, "dense_chunk_layers": self.dense_chunks,
                "dense_tail_row_layers": self.dense_tail_rows,
                "density": self.density, "estimate_s": self.estimate_s, "attend_s": self.attend_s}


class _Clock:
    """Marks intervals: CUDA events when timing on the GPU, the wall clock on the CPU."""

    def __init__(self, stats: SparseStats, device: torch.device, enabled: bool):
        self.stats, self.cuda = stats, device.type == "cuda"
        self.enabled = enabled or not self.cuda

    def mark(self):
        if not self.enabled:
            return None
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def add(self, what: str, a, b) -> None:
        if a is None:
            return
        if self.cuda:
            self.stats._events.append((what, a, b))
        else:
            self.stats._seconds[what] += b - a


class SparseAttentionBackend(DenseAttentionBackend):
    name = "sparse"

    def __init__(self, rotary, head_dim: int, sparse_config: SparseConfig | None = None, *,
                 timing: bool = False, record_recall: bool = False):
        super().__init__(rotary, head_dim)
        self.config = sparse_config or SparseConfig()
        self.timing = timing                 # time estimation / attention and count density on CUDA
        self.record_recall = record_recall
        self.stats = SparseStats()
        self.last_pattern: VSPattern | None = None
        self._layer = 0

    def reset_stats(self) -> None:
        self.stats = SparseStats()

    def prepare(self, batch: AttentionBatch, dtype: torch.dtype) -> None:
        super().prepare(batch, dtype)
        batch.extras["sparse"] = self.stats

    def forward(self, layer, q, k, v, batch: AttentionBatch) -> torch.Tensor:
        self._layer = layer   # attend_seq has no layer argument; budgets are per layer
        return super().forward(layer, q, k, v, batch)

    def chunk_dependent_from(self) -> int | None:
        return self.config.threshold

    def prompt_tail_dependent(self) -> int:
        return self.config.dense_tail

    def use_sparse(self, start: int, n: int) -> bool:
        """Whether a prefill chunk of n rows from `start` has rows at positions >= threshold."""
        return n > 1 and start + n > self.config.threshold

    def sparse_rows(self, s, n: int) -> tuple[int, int] | None:
        """Rows [a, b) of this chunk of n rows that run vertical-slash: those at positions >=
        threshold, up to the prompt's last `dense_tail` tokens; rows [0, a) (below the threshold)
        and [b, n) (the tail) attend densely. None: the whole chunk runs dense (below the
        threshold: counted as a dense chunk; or at most one row would be sparse). Counts the tail
        rows at or past the threshold in the stats."""
        if not self.use_sparse(s.start_pos, n):
            if n > 1:
                self.stats.dense_chunks += 1
            return None
        a, b, t = min(n, max(0, self.config.threshold - s.start_pos)), n, self.config.dense_tail
        if t > 0 and s.prompt_len > 0:
            b = max(a, min(n, s.prompt_len - t - s.start_pos))
        self.stats.dense_tail_rows += n - b
        return (a, b) if b - a > 1 else None

    def attend_seq(self, q, k, v, s, k_cache, v_cache) -> torch.Tensor:
        start, n = s.start_pos, q.shape[0]
        rows = self.sparse_rows(s, n)
        if rows is None:
            return super().attend_seq(q, k, v, s, k_cache, v_cache)
        a, b = rows
        if (a, b) != (0, n):   # dense rows below the threshold, sparse rows, the dense tail: in order
            outs = []
            for lo, hi, part, sparse in split_chunk(s, a, b):
                run = self.attend_seq if sparse else super().attend_seq
                outs.append(run(q[lo:hi], k[lo:hi], v[lo:hi], part, k_cache, v_cache))
            return torch.cat(outs)
        write_kv(k_cache, s.slots, start, k)
        write_kv(v_cache, s.slots, start, v)
        m = start + n
        keys, vals = read_kv(k_cache, s.slots, 0, m), read_kv(v_cache, s.slots, 0, m)
        clock = _Clock(self.stats, q.device, self.timing)
        t0 = clock.mark()
        pattern = self.estimate(self._layer, q[-min(self.config.last_q, n):], keys, start, n)
        t1 = clock.mark()
        out, lse = vertical_slash_attention(q, keys, vals, pattern, start=start, scale=self.scale,
                                            kernel=self.config.kernel)
        t2 = clock.mark()
        self.account(pattern, clock, t0, t1, t2, n, start)
        if self.record_recall:
            self._record_recall(q, keys, lse, start)
        return out

    def estimate(self, layer: int, q_last, keys, start: int, n: int) -> VSPattern:
        """q_last: [L, H, D] (or DCA segments) at positions start + n - L ..; keys [Hkv, m, D]."""
        cfg = self.config
        L, H = (q_last if isinstance(q_last, torch.Tensor) else q_last[0][2]).shape[:2]
        return estimate_vertical_slash(q_last, keys, start + n - L, cfg.budgets(layer, H),
                                       scale=self.scale, block_size=cfg.block_size,
                                       sink_tokens=cfg.sink_tokens,
                                       local_diagonals=cfg.local_diagonals, kernel=cfg.estimator)

    def account(self, pattern: VSPattern, clock: _Clock, t0, t1, t2, n: int, start: int) -> None:
        st = self.stats
        st.sparse_chunks += 1
        clock.add("estimate", t0, t1)
        clock.add("attend", t1, t2)
        if clock.enabled or self.record_recall:
            st._pending.append((start, self._layer if self.record_recall else None, pattern, n))
            total = pattern.num_heads * causal_entries(n, start)
            st.total += total
            st.chunks.setdefault(start, [0.0, 0.0])[1] += total
        self.last_pattern = pattern

    def _record_recall(self, q, keys, lse, start: int) -> None:
        L = min(self.config.last_q, q.shape[0])
        dense = dense_lse(q[-L:], keys, start + q.shape[0] - L, 0, keys.shape[1], self.scale)
        self.record(lse[-L:], dense)

    def record(self, lse_sparse: torch.Tensor, lse_dense: torch.Tensor) -> None:
        """Attention recall exp(lse_sparse - lse_dense) of the last queries, averaged per head."""
        rec = torch.exp(lse_sparse - lse_dense).mean(0)                          # [H]
        self.stats.recall.setdefault(self._layer, []).append(rec)


def split_chunk(s: SeqChunk, a: int, b: int) -> list[tuple[int, int, SeqChunk, bool]]:
    """A sequence's chunk cut at its rows a <= b: (lo, hi, chunk of rows [lo, hi) from position
    start_pos + lo, sparse) for the non-empty ones of [0, a), [a, b), [b, n). Only the middle one
    runs sparse; it has no prompt tail of its own (it is not split again)."""
    n, out = s.num_new, []
    for lo, hi in ((0, a), (a, b), (b, n)):
        if lo < hi:
            sparse = (lo, hi) == (a, b)
            out.append((lo, hi, replace(s, row_start=s.row_start + lo, row_end=s.row_start + hi,
                                        start_pos=s.start_pos + lo,
                                        prompt_len=0 if sparse else s.prompt_len), sparse))
    return out


def dense_lse(q: torch.Tensor, keys: torch.Tensor, q_pos0: int, k0: int, k1: int,
              scale: float) -> torch.Tensor:
    """Exact causal log-sum-exp of q [L, H, D] at positions q_pos0.. over keys [k0, k1) of
    keys [Hkv, m, D] -> [L, H] float32 (-inf where no key). One kv head at a time: [G, L, k1-k0]."""
    L, H, D = q.shape
    Hkv = keys.shape[0]
    G = H // Hkv
    kpos = torch.arange(k0, k1, device=q.device)
    future = kpos[None, :] > torch.arange(q_pos0, q_pos0 + L, device=q.device)[:, None]
    out = []
    for g in range(Hkv):
        s = torch.matmul(q[:, g * G:(g + 1) * G].transpose(0, 1).float(),
                         keys[g, k0:k1].float().T) * scale                       # [G, L, k1-k0]
        out.append(torch.logsumexp(s.masked_fill_(future, float("-inf")), -1))
    return torch.cat(out).T.contiguous()
