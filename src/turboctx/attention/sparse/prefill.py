"""The vertical-slash prefill pattern (MInference, arXiv 2407.02490): sparse above a length
threshold, dense below it, for any positions (plain RoPE or DCA: backend.py).

Per prefill chunk and layer, the chunk's rows at positions >= threshold that are not among the
prompt's last `dense_tail` tokens (`sparse_rows`) run sparse: the pattern is estimated from their
last `last_q` queries against all keys, rotated as the positions say the attention will see them
(scores.py, pattern.py), then each part of the rows (a key range with its own query rotation)
attends only the selected set (attention.py) and the parts merge by log-sum-exp. The chunk's other
rows, decode steps and short sequences run the dense pattern unchanged.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from turboctx.attention.backend import Part, SeqChunk, SeqQueries, causal_pairs
from turboctx.attention.dense import DensePattern
from turboctx.attention.ops import merge_attention
from turboctx.attention.sparse.attention import vertical_slash_attention
from turboctx.attention.sparse.config import SparseConfig
from turboctx.attention.sparse.pattern import VSPattern
from turboctx.attention.sparse.scores import estimate_vertical_slash
from turboctx.attention.sparse.stats import Clock, RecallObserver, SparseStats
from turboctx.kv_cache import read_kv


class SparsePattern:
    name = "sparse"

    def __init__(self, scale: float, config: SparseConfig | None = None, *, kernel: str = "auto",
                 estimator: str = "auto"):
        """kernel / estimator: which implementation runs ('auto': Triton on CUDA, torch
        elsewhere; tests pin one)."""
        self.scale, self.config = scale, config or SparseConfig()
        self.dense = DensePattern(scale)
        self.kernel, self.estimator = kernel, estimator
        self.stats = SparseStats()
        self.timing = False          # CUDA: time estimation / attention and count density
        self.observer: RecallObserver | None = None
        self.last_pattern: VSPattern | None = None

    def chunk_dependent_from(self) -> int:
        return self.config.threshold

    def prompt_tail_dependent(self) -> int:
        return self.config.dense_tail

    def attention_pairs(self, start: int, n: int, prompt_len: int) -> float:
        """Dense rows count every key up to their position; a sparse row its budget of vertical
        and slash keys; the estimation scores last_q queries against every key."""
        cfg = self.config
        if not (n > 1 and start + n > cfg.threshold):
            return causal_pairs(start, n)
        a, b = min(n, max(0, cfg.threshold - start)), n
        if cfg.dense_tail > 0 and prompt_len > 0:
            b = max(a, min(n, prompt_len - cfg.dense_tail - start))
        budget = cfg.vertical_size + cfg.slash_size
        return (causal_pairs(start, a) + (b - a) * min(budget, start + n)
                + causal_pairs(start + b, n - b) + cfg.last_q * (start + n))

    def sparse_rows(self, s: SeqChunk, n: int) -> tuple[int, int] | None:
        """Rows [a, b) of this chunk of n rows that run vertical-slash: those at positions >=
        threshold, up to the prompt's last `dense_tail` tokens; rows [0, a) (below the threshold)
        and [b, n) (the tail) attend densely. None: the whole chunk runs dense (below the
        threshold: counted as a dense chunk; or at most one row would be sparse). Counts the tail
        rows at or past the threshold in the stats."""
        cfg = self.config
        if not (n > 1 and s.start_pos + n > cfg.threshold):
            if n > 1:
                self.stats.dense_chunks += 1
            return None
        a, b, t = min(n, max(0, cfg.threshold - s.start_pos)), n, cfg.dense_tail
        if t > 0 and s.prompt_len > 0:
            b = max(a, min(n, s.prompt_len - t - s.start_pos))
        self.stats.dense_tail_rows += n - b
        return (a, b) if b - a > 1 else None

    def attend(self, layer: int, s: SeqChunk, queries: SeqQueries, parts: list[Part],
               k_cache: torch.Tensor, v_cache: torch.Tensor, positions) -> torch.Tensor:
        n = s.num_new
        rows = self.sparse_rows(s, n)
        if rows is None:
            return self.dense.attend(layer, s, queries, parts, k_cache, v_cache)
        if rows != (0, n):   # dense rows below the threshold, sparse rows, the dense tail: in order
            outs = []
            for lo, hi, sub, sparse in split_chunk(s, *rows):
                run = self.attend if sparse else self.dense.attend
                outs.append(run(layer, sub, queries.rows(lo, hi), positions.parts(sub.start_pos, hi - lo),
                                k_cache, v_cache, positions))
            return torch.cat(outs)
        start, m = s.start_pos, s.start_pos + n
        keys, vals = read_kv(k_cache, s.slots, 0, m), read_kv(v_cache, s.slots, 0, m)
        clock = Clock(self.stats, keys.device, self.timing)
        t0 = clock.mark()
        last = min(self.config.last_q, n)
        pattern = self.estimate(layer, positions.selection_queries(queries, start, m, last),
                                keys, m - last)
        t1 = clock.mark()
        merged = merged_parts(parts)
        qs = queries.rotated
        if len(merged) == 1:      # plain RoPE: one call over every row and key
            lo, hi, kind, k0, k1 = merged[0]
            out, lse = vertical_slash_attention(qs[kind], keys, vals, pattern, start=start,
                                                scale=self.scale, kernel=self.kernel,
                                                rows=(lo, hi), keys=(k0, k1))
        else:
            q = queries.q
            out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)        # [n, H, D]
            lse = torch.full(q.shape[:2], float("-inf"), dtype=torch.float32, device=q.device)
            for lo, hi, kind, k0, k1 in merged:
                o, l = vertical_slash_attention(qs[kind], keys, vals, pattern, start=start,
                                                scale=self.scale, kernel=self.kernel,
                                                rows=(lo, hi), keys=(k0, k1))
                out[lo:hi], lse[lo:hi] = merge_attention(out[lo:hi], lse[lo:hi], o, l)
            out = out.to(q.dtype)
        t2 = clock.mark()
        self.account(layer, pattern, clock, t0, t1, t2, n, start)
        if self.observer is not None:
            self.observer.on_recall(layer, lse[-last:],
                                    dense_lse_last(qs, merged, keys, start, n, last, self.scale))
        return out

    def estimate(self, layer: int, q_last, keys: torch.Tensor, q_pos0: int) -> VSPattern:
        """q_last: [L, H, D] (or DCA segments) at positions q_pos0 ..; keys [Hkv, m, D]."""
        cfg = self.config
        H = (q_last if isinstance(q_last, torch.Tensor) else q_last[0][2]).shape[1]
        return estimate_vertical_slash(q_last, keys, q_pos0, cfg.budgets(layer, H),
                                       scale=self.scale, block_size=cfg.block_size,
                                       sink_tokens=cfg.sink_tokens,
                                       local_diagonals=cfg.local_diagonals, kernel=self.estimator)

    def account(self, layer: int, pattern: VSPattern, clock: Clock, t0, t1, t2, n: int,
                start: int) -> None:
        st = self.stats
        st.sparse_chunks += 1
        clock.add("estimate", t0, t1)
        clock.add("attend", t1, t2)
        obs = self.observer
        if clock.enabled or obs is not None:
            st.count(pattern, n, start, None if obs is None else
                     (lambda kept, total: obs.on_kept(layer, kept, total)))
        self.last_pattern = pattern


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


def merged_parts(parts: list[Part]) -> list[tuple[int, int, int, int, int]]:
    """Parts -> (row_lo, row_hi, kind, key_lo, key_hi), the parts of one row range and kind over
    adjacent key ranges joined (the sparse kernels mask causally by themselves)."""
    out: list[list[int]] = []
    for lo, hi, kind, k0, k1, _ in parts:
        prev = out[-1] if out else None
        if prev and prev[:3] == [lo, hi, kind] and (prev[4] == k0 or prev[3] == k1):
            prev[3], prev[4] = min(prev[3], k0), max(prev[4], k1)
        else:
            out.append([lo, hi, kind, k0, k1])
    return [tuple(p) for p in out]


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


def dense_lse_last(qs: dict[int, torch.Tensor], parts, keys: torch.Tensor, start: int, n: int,
                   last: int, scale: float) -> torch.Tensor:
    """Exact log-sum-exp of a chunk's last rows over every key of their (merged) parts: [last, H]."""
    first = n - last
    lse = torch.full((last, next(iter(qs.values())).shape[1]), float("-inf"), device=keys.device)
    for lo, hi, kind, k0, k1 in parts:
        a = max(lo, first)
        if a < hi:
            part = dense_lse(qs[kind][a:hi], keys, start + a, k0, k1, scale)
            lse[a - first:hi - first] = torch.logaddexp(lse[a - first:hi - first], part)
    return lse
