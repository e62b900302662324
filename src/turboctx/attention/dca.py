"""Dual Chunk Attention (DCA) with YaRN attention scaling: training-free length extrapolation.

Sources (our own code; read these for the derivation): An et al. 2024, "Training-Free
Long-Context Scaling of Large Language Models" (arXiv 2402.17463, code github HKUNLP/ChunkLlama),
the Qwen2.5-1M report (arXiv 2501.15383, section 5.1) and vLLM's `DualChunkRotaryEmbedding` /
`dual_chunk_flash_attn.py` (v0.8-v0.10).

With chunk_len = chunk_size - local_size, a token at absolute position i lies in DCA chunk
i // chunk_len at offset r = i % chunk_len. Keys are rotated once, at r, and stored so in the
cache. A query at i attends to
  - intra:  keys of its own chunk, query rotated at r (ordinary relative positions);
  - succ:   keys of the previous chunk, query at min(chunk_len + r, chunk_size - 1);
  - inter:  keys of older chunks, query at chunk_size - 1;
so no query-key distance exceeds chunk_size - 1. Each part is an attention over a disjoint key
range, merged exactly by log-sum-exp. Queries with r >= local_size use chunk_size - 1 for both
the previous and the older chunks, so they attend to all of those keys in one call: the total
work per query is exactly its i + 1 keys, as in dense attention.

Difference from vLLM / ChunkLlama (documented on purpose): they clamp the successive and inter
query position at chunk_size (max distance chunk_size); we follow the paper (Fig. 2: "relative
positions do not exceed c - 1"), clamping at chunk_size - 1, so with
chunk_size = trained length every distance stays inside the trained range. vLLM also multiplies
keys by the YaRN factor of the step that wrote them (so cached keys keep an older factor); we
keep the cache unscaled and scale each query's logits by (0.1 ln s + 1)^2 with s taken from the
query's own position (s = (p + 1) / trained length): positions inside the trained length stay
exact, and one prompt's KV does not depend on how long the prompt is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from turboctx.attention.backend import AttentionBatch, Part, SeqQueries
from turboctx.attention.rotary import RotaryEmbedding, apply_rotary

INTRA, SUCC, INTER = 0, 1, 2     # the three query rotations (Part.kind)


@dataclass(frozen=True)
class DCAConfig:
    chunk_size: int                        # max query-key distance + 1 (<= trained length)
    local_size: int                        # window of the previous chunk kept at true distance
    original_max_position_embeddings: int  # trained length: YaRN's s = (position + 1) / this
    yarn_scaling: bool = True              # logits *= (0.1 ln s + 1)^2 when s > 1

    def __post_init__(self):
        for name in ("chunk_size", "local_size", "original_max_position_embeddings"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise ValueError(f"DCA {name} must be an int, got {getattr(self, name)!r}")
        if self.chunk_size < 2:
            raise ValueError(f"DCA chunk_size={self.chunk_size} must be >= 2")
        if not 0 <= self.local_size < self.chunk_size:
            raise ValueError(
                f"DCA local_size={self.local_size} must be in [0, chunk_size={self.chunk_size}); "
                f"e.g. chunk_size // 8 = {self.chunk_size // 8}")
        if self.original_max_position_embeddings < 1:
            raise ValueError("DCA original_max_position_embeddings must be >= 1 (the trained length)")
        if self.chunk_size > self.original_max_position_embeddings:
            raise ValueError(
                f"DCA chunk_size={self.chunk_size} exceeds the trained length "
                f"original_max_position_embeddings={self.original_max_position_embeddings}: "
                f"distances up to chunk_size - 1 would leave the trained range; set chunk_size <= "
                f"{self.original_max_position_embeddings}")

    @property
    def chunk_len(self) -> int:
        return self.chunk_size - self.local_size

    def yarn_logit_scale(self, length: int) -> float:
        """Logit multiplier (0.1 ln s + 1)^2 for s = length / trained length; 1 when s <= 1."""
        s = length / self.original_max_position_embeddings
        if not self.yarn_scaling or s <= 1:
            return 1.0
        return (0.1 * math.log(s) + 1.0) ** 2

    def yarn_logit_scales(self, lengths: torch.Tensor) -> torch.Tensor:
        """yarn_logit_scale of every length in a tensor, by device ops alone (CUDA-graph decode
        computes it inside the graph): float64 as the scalar form, returned in float32."""
        s = (lengths.double() / self.original_max_position_embeddings).clamp(min=1.0)
        scale = (0.1 * torch.log(s) + 1.0) ** 2                   # exactly 1 where s <= 1
        return (scale if self.yarn_scaling else torch.ones_like(scale)).float()


def plan_parts(cfg: DCAConfig, start: int, n: int) -> list[Part]:
    """The parts of n new tokens at positions [start, start+n) of one sequence: per row the key
    ranges are disjoint and cover [0, position]; Part.kind is the query rotation (INTRA, SUCC,
    INTER)."""
    cl, parts, a, end = cfg.chunk_len, [], start, start + n
    while a < end:
        c0 = (a // cl) * cl                     # first position of this DCA chunk
        b = min(end, c0 + cl)
        lo, hi = a - start, b - start
        if b - a == 1:                          # one query: its chunk's keys up to itself
            parts.append(Part(lo, hi, INTRA, c0, b, False))
        else:
            parts.append(Part(lo, hi, INTRA, a, b, True))
            if a > c0:
                parts.append(Part(lo, hi, INTRA, c0, a, False))
        if c0 > 0:
            split = min(max(c0 + cfg.local_size, a), b)   # first row past the local window
            if split > a:   # near rows: true distance to the previous chunk, fixed one to older
                parts.append(Part(lo, split - start, SUCC, c0 - cl, c0, False))
                if c0 > cl:
                    parts.append(Part(lo, split - start, INTER, 0, c0 - cl, False))
            if split < b:   # far rows: chunk_size - 1 toward every earlier chunk, one call
                parts.append(Part(split - start, hi, INTER, 0, c0, False))
        a = b
    return parts


def query_positions(cfg: DCAConfig, pos: torch.Tensor):
    """Rotary positions of queries at absolute positions `pos` in each DCA part (keys sit at
    j % chunk_len): (intra, successive, inter), each shaped like pos. Only rows with
    r = pos % chunk_len < local_size attend the previous chunk as successive (plan_parts), so the
    paper's clamp at chunk_size - 1 never binds there."""
    r = pos % cfg.chunk_len
    return r, (r + cfg.chunk_len).clamp(max=cfg.chunk_size - 1), torch.full_like(pos, cfg.chunk_size - 1)


@dataclass
class DCAState:
    k: tuple                          # cos/sin [N, D] at r: keys and intra queries
    succ: tuple | None                # at the successive position (None: no part needs it)
    inter: tuple | None               # [1, D] at chunk_size - 1
    q_scale: torch.Tensor | None      # [N, 1, 1] YaRN logit multiplier, None where all are 1
    parts: list[list[Part]]           # per sequence


class DCAPositions:
    name = "dca"

    def __init__(self, rotary: RotaryEmbedding, scale: float, config: DCAConfig):
        self.rotary, self.scale, self.cfg = rotary, scale, config

    def prepare(self, batch: AttentionBatch, dtype: torch.dtype) -> DCAState:
        cfg, pos = self.cfg, batch.positions
        r, succ_pos, inter_pos = query_positions(cfg, pos)
        plans = [plan_parts(cfg, s.start_pos, s.num_new) for s in batch.seqs]
        kinds = {p.kind for plan in plans for p in plan}
        q_scale = None
        longest = max((s.start_pos + s.num_new for s in batch.seqs), default=0)
        if cfg.yarn_scaling and longest > cfg.original_max_position_embeddings:
            q_scale = cfg.yarn_logit_scales(pos + 1)[:, None, None].to(dtype)
        return DCAState(self.rotary.cos_sin(r, dtype),
                        self.rotary.cos_sin(succ_pos, dtype) if SUCC in kinds else None,
                        self.rotary.cos_sin(inter_pos[:1], dtype) if INTER in kinds else None,
                        q_scale, plans)

    def rotate(self, q, k, state: DCAState):
        if state.q_scale is not None:
            q = q * state.q_scale
        cos, sin = state.k
        qs = {INTRA: apply_rotary(q, cos, sin)}
        if state.succ is not None:
            qs[SUCC] = apply_rotary(q, *state.succ)
        if state.inter is not None:
            qs[INTER] = apply_rotary(q, *state.inter)
        return qs, apply_rotary(k, cos, sin), q

    def parts(self, start: int, n: int) -> list[Part]:
        return plan_parts(self.cfg, start, n)

    def selection_queries(self, queries: SeqQueries, start: int, m: int, last: int):
        """The last queries rotated per DCA chunk of keys, as the part that attends (row, key
        chunk) rotates them (intra r, successive r + chunk_len inside the local window, else
        chunk_size - 1): the estimator scores exactly the attention that will be computed.
        (Rotating them at true positions instead, as ordinary attention would, measured worse
        on the default model: its retrieval heads do not fire at distances past the trained
        length.) -> [(key_lo, key_hi, q_last [last, H, D])] covering keys [0, m)."""
        cfg, cl = self.cfg, self.cfg.chunk_len
        q = queries.q[-last:]
        pos = torch.arange(m - last, m, device=q.device)                            # [last]
        intra, succ, inter = query_positions(cfg, pos)
        cq = pos // cl
        segs = []
        for c in range((m + cl - 1) // cl):     # key chunk c; c > cq: masked anyway
            near = (intra < cfg.local_size) & (c == cq - 1)
            qpos = torch.where(c >= cq, intra, torch.where(near, succ, inter))
            cos, sin = self.rotary.cos_sin(qpos, q.dtype)
            segs.append((c * cl, min(m, (c + 1) * cl), apply_rotary(q, cos, sin)))
        return segs

    def graph_decode(self) -> "DCAGraphDecode":
        return DCAGraphDecode(self.rotary, self.scale, self.cfg)


class DCAGraphDecode:
    """DCAPositions' decode step with static shapes, for a CUDA graph (engine/cuda_graph.py).

    The eager path plans each query's parts in Python: a decode query at position p, in DCA
    chunk c0 = p - r (r = p % chunk_len), attends to
      - intra: keys [c0, p], query rotated at r;
      - succ:  keys [c0 - chunk_len, c0), query at chunk_len + r, when r < local_size and c0 > 0;
      - inter: keys [0, c0 - chunk_len) when r < local_size, else [0, c0), query at chunk_size - 1.
    Here the ranges' bounds come from the positions tensor, and one split-KV decode attention
    (decode_kernel.py) reads every key once, with the query rotation of the part the key lies
    in, in a single softmax: the same sum the eager path merges from three parts by
    log-sum-exp. YaRN's logit scale comes from each query's own position, inside the graph."""
    name = "dca-graph-decode"

    def __init__(self, rotary: RotaryEmbedding, scale: float, config: DCAConfig):
        from turboctx.attention import decode_kernel   # Triton: ImportError where it is missing
        self.rotary, self.cfg, self.scale, self.kernels = rotary, config, scale, decode_kernel

    def step_extras(self, pos: torch.Tensor, lens: torch.Tensor, starts: torch.Tensor,
                    dtype: torch.dtype, num_splits: int) -> dict:
        """Per-step tensors from positions pos [B], lengths lens [B] (0: a padding row) and first
        cache slots starts [B]: rotary tables of the three query positions [3, B, D], where each
        part's keys begin ([2, B]: intra, succ; inter from 0) and the YaRN logit scale [B].
        Device ops only."""
        cfg, cl = self.cfg, self.cfg.chunk_len
        r, succ_pos, inter_pos = query_positions(cfg, pos)               # [B] each
        c0 = pos - r                                                     # first position of p's chunk
        near = (r < cfg.local_size) & (c0 > 0)                           # attends the previous chunk as succ
        bounds = torch.stack((c0, torch.where(near, c0 - cl, c0)))       # [2, B]: intra_lo, succ_lo
        tables = [self.rotary.cos_sin(x, dtype) for x in (r, succ_pos, inter_pos)]
        q_scale = cfg.yarn_logit_scales(pos + 1).to(dtype) if cfg.yarn_scaling else None
        return {"dca_cos_sin": tuple(torch.stack(t) for t in zip(*tables)), "seq_lens": lens,
                "slot_starts": starts, "dca_bounds": bounds, "q_scale": q_scale,
                "num_splits": num_splits}

    def forward(self, layer, q, k, v, batch: AttentionBatch) -> torch.Tensor:
        """q: [B, H, D]; k, v: [B, Hkv, D] un-rotated -> [B, H, D]. Two launches: the rotary one
        writes the new k/v (rotated at r) and the three query rotations [3, B, H, D]; one split-KV
        attention reads each key once with the query of its part."""
        ex = batch.extras
        k_cache, v_cache = batch.kv_cache.layer(layer)
        q3 = self.kernels.rotary_store_kv(q, k, v, *ex["dca_cos_sin"], k_cache, v_cache,
                                          ex["seq_lens"], ex["slot_starts"], q_scale=ex["q_scale"])
        return self.kernels.decode_attention(q3, k_cache, v_cache, ex["seq_lens"], ex["slot_starts"],
                                             self.scale, ex["num_splits"], dca_bounds=ex["dca_bounds"])[0]
