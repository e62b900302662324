"""DCA + vertical-slash sparse prefill (the Qwen2.5-1M recipe, GUIDE §2).

The cache holds keys rotated at their in-chunk offset r = j % chunk_len (dca.py); each DCA part
(a key range with its own query rotation, dca.plan_parts) is an attention of its own.
  - Selection: the pattern is estimated per DCA chunk of keys (a key segment,
    sparse_pattern.Segment) with the last queries rotated per segment, one softmax over all
    segments. `SparseConfig.dca_selection` picks the rotation:
      "dca" (default): each (query, key chunk) pair at the position its DCA part attends with
        (intra r, successive r + chunk_len inside the local window, else chunk_size - 1), so the
        estimator scores exactly the attention that will be computed;
      "continuous": at p - c * chunk_len, the scores of ordinary attention at true positions
        (GUIDE §2's wording). Past the trained length those are distances the model never saw,
        and its retrieval heads do not fire there: on the default model (trained to 8K),
        continuous selection lost every passkey that dense DCA found at 16K-32K and cost
        +0.08 nats at 16-32K at budgets (1000, 5000); DCA selection found the same passkeys as
        dense and cost +0.011 (H200, docs/SPARSE.md).
    (vLLM's dual-chunk backend selects with intra / succ at true distances and older chunks at
    r + chunk_size: between the two.)
  - Attention: the attended set (sparse_blocks.py) is intersected with each DCA part and the
    parts are merged by log-sum-exp.
Rows below the sparse threshold, the prompt's dense tail and decode steps run plain DCA.
"""
from __future__ import annotations

import torch

from turboctx.attention.dca import INTRA, DCAAttentionBackend, DCAConfig, plan_parts, query_positions
from turboctx.attention.kernels import merge_attention
from turboctx.attention.sparse import SparseAttentionBackend, _Clock, dense_lse, split_chunk
from turboctx.attention.sparse_attention import vertical_slash_attention
from turboctx.attention.sparse_config import SparseConfig
from turboctx.kv_cache import read_kv
from turboctx.models.layers import apply_rotary


def merged_parts(plan) -> list[tuple[int, int, int, int, int]]:
    """dca.plan_parts -> (row_lo, row_hi, kind, key_lo, key_hi), with the parts of one row range
    and kind over adjacent key ranges joined (the sparse path masks causally by itself)."""
    out: list[list[int]] = []
    for lo, hi, kind, k0, k1, _ in plan:
        prev = out[-1] if out else None
        if prev and prev[:3] == [lo, hi, kind] and (prev[4] == k0 or prev[3] == k1):
            prev[3], prev[4] = min(prev[3], k0), max(prev[4], k1)
        else:
            out.append([lo, hi, kind, k0, k1])
    return [tuple(p) for p in out]


def _from_sparse(name: str, settable: bool = False) -> property:
    """Attribute `name` of the wrapped SparseAttentionBackend (`self.sparse`)."""
    def put(self, value):
        setattr(self.sparse, name, value)
    return property(lambda self: getattr(self.sparse, name), put if settable else None)


class DCASparseAttentionBackend(DCAAttentionBackend):
    name = "dca+sparse"

    def __init__(self, rotary, head_dim: int, dca_config: DCAConfig,
                 sparse_config: SparseConfig | None = None, *, timing: bool = False,
                 record_recall: bool = False):
        super().__init__(rotary, head_dim, dca_config)
        self.sparse = SparseAttentionBackend(rotary, head_dim, sparse_config, timing=timing,
                                             record_recall=record_recall)

    # the wrapped sparse backend's state, seen through this one (timing and recall switchable)
    stats = _from_sparse("stats")
    config = _from_sparse("config")
    last_pattern = _from_sparse("last_pattern")
    timing = _from_sparse("timing", settable=True)
    record_recall = _from_sparse("record_recall", settable=True)

    def reset_stats(self) -> None:
        self.sparse.reset_stats()

    def chunk_dependent_from(self) -> int | None:
        return self.sparse.chunk_dependent_from()

    def prompt_tail_dependent(self) -> int:
        return self.sparse.prompt_tail_dependent()

    def prepare(self, batch, dtype) -> None:
        super().prepare(batch, dtype)
        batch.extras["sparse"] = self.sparse.stats

    def attend_one(self, layer, s, q, qs, plan, k_cache, v_cache) -> torch.Tensor:
        sp, start, n = self.sparse, s.start_pos, q.shape[0]
        rows = sp.sparse_rows(s, n)
        if rows is None:
            return super().attend_one(layer, s, q, qs, plan, k_cache, v_cache)
        a, b = rows
        if (a, b) != (0, n):   # plain DCA below the threshold, sparse rows, plain DCA tail: in order
            outs = []
            for lo, hi, part, sparse in split_chunk(s, a, b):
                run = self.attend_one if sparse else super().attend_one
                outs.append(run(layer, part, q[lo:hi], {kd: x[lo:hi] for kd, x in qs.items()},
                                plan_parts(self.cfg, start + lo, hi - lo), k_cache, v_cache))
            return torch.cat(outs)
        sp._layer = layer
        m = start + n
        keys, vals = read_kv(k_cache, s.slots, 0, m), read_kv(v_cache, s.slots, 0, m)
        clock = _Clock(sp.stats, q.device, sp.timing)
        t0 = clock.mark()
        pattern = sp.estimate(layer, self.selection_segments(q, start, m), keys, start, n)
        t1 = clock.mark()
        out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)           # [n, H, D]
        lse = torch.full(q.shape[:2], float("-inf"), dtype=torch.float32, device=q.device)
        parts = merged_parts(plan)
        for lo, hi, kind, k0, k1 in parts:
            o, l = vertical_slash_attention(qs[kind], keys, vals, pattern, start=start,
                                            scale=self.scale, kernel=sp.config.kernel,
                                            rows=(lo, hi), keys=(k0, k1))
            out[lo:hi], lse[lo:hi] = merge_attention(out[lo:hi], lse[lo:hi], o, l)
        t2 = clock.mark()
        sp.account(pattern, clock, t0, t1, t2, n, start)
        if sp.record_recall:
            L = min(sp.config.last_q, n)
            sp.record(lse[-L:], self.dense_lse_last(qs, parts, keys, start, n, L))
        return out.to(q.dtype)

    def selection_segments(self, q: torch.Tensor, start: int, m: int):
        """The last queries, rotated per DCA chunk of keys (see the module doc, dca_selection):
        [(key_lo, key_hi, q_last [L, H, D])] covering keys [0, m)."""
        cfg, cl = self.cfg, self.cfg.chunk_len
        L = min(self.config.last_q, q.shape[0])
        pos = torch.arange(m - L, m, device=q.device)                               # [L]
        intra, succ, inter = query_positions(cfg, pos)
        cq = pos // cl
        segs = []
        for c in range((m + cl - 1) // cl):
            if self.config.dca_selection == "continuous":
                qpos = pos - c * cl
            else:   # the part that attends (row, key chunk c), as plan_parts; c > cq: masked
                near = (intra < cfg.local_size) & (c == cq - 1)
                qpos = torch.where(c >= cq, intra, torch.where(near, succ, inter))
            cos, sin = self.rotary.cos_sin(qpos, q.dtype)
            segs.append((c * cl, min(m, (c + 1) * cl), apply_rotary(q[-L:], cos, sin)))
        return segs

    def dense_lse_last(self, qs, parts, keys, start: int, n: int, L: int) -> torch.Tensor:
        """Exact DCA log-sum-exp of the last L rows (every key, DCA positions): [L, H]."""
        first = n - L
        lse = torch.full((L, qs[INTRA].shape[1]), float("-inf"), device=keys.device)
        for lo, hi, kind, k0, k1 in parts:
            a = max(lo, first)
            if a < hi:
                part = dense_lse(qs[kind][a:hi], keys, start + a, k0, k1, self.scale)
                lse[a - first:hi - first] = torch.logaddexp(lse[a - first:hi - first], part)
        return lse
