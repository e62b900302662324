"""Dual Chunk Attention (DCA) with YaRN attention scaling: training-free length extrapolation.

Sources (our own code; read these for the derivation): An et al. 2024, "Training-Free
Long-Context Scaling of Large Language Models" (arXiv 2402.17463, code github HKUNLP/ChunkLlama),
the Qwen2.5-1M report (arXiv 2501.15383, §5.1) and vLLM's `DualChunkRotaryEmbedding` /
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
positions do not exceed c - 1") and the issue's reference, clamping at chunk_size - 1, so with
chunk_size = trained length every distance stays inside the trained range. vLLM also multiplies
keys by the YaRN factor of the step that wrote them (so cached keys keep an older factor); we
keep the cache unscaled and scale each query's logits by the factor squared, which is the GUIDE
formula applied consistently.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch

from turboctx.attention.backend import AttentionBackend, AttentionBatch
from turboctx.attention.kernels import attend
from turboctx.kv_cache import read_kv, write_kv
from turboctx.models.layers import RotaryEmbedding, apply_rotary

# The engine may put, per step, one int per sequence in batch.extras[SEQ_LENS_KEY]: the length
# the YaRN factor uses (vLLM: max(prompt length, tokens so far)). Without it, start_pos + num_new.
SEQ_LENS_KEY = "seq_lens"

INTRA, SUCC, INTER = 0, 1, 2


@dataclass
class DCAConfig:
    chunk_size: int                        # max query-key distance + 1 (<= trained length)
    local_size: int                        # window of the previous chunk kept at true distance
    original_max_position_embeddings: int  # trained length: YaRN's s = length / this
    yarn_scaling: bool = True              # logits *= (0.1 ln s + 1)^2 when s > 1
    yarn_per_position: bool = False        # s from each query's position + 1, not the sequence length

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

    @classmethod
    def from_model(cls, model_config: Any, overrides: dict | None = None) -> "DCAConfig":
        """From a ModelConfig (or HF config dict) and user overrides (field names, None = unset).

        A `dual_chunk_attention_config` in the model config (Qwen2.5-*-1M) gives chunk_size /
        local_size / original_max_position_embeddings (vLLM defaults 8192 / 1024 when a key is
        missing; YaRN on iff original_max_position_embeddings is given, as in vLLM). Otherwise,
        with T = max_position_embeddings (the trained length): chunk_size = T (every distance
        stays within the trained range, and the longest stretch of exact positions), local_size
        = chunk_size // 8 (vLLM's 8192/1024 ratio; for T = 8192 it is the setting the issue's
        measurements were taken at), original_max_position_embeddings = T, YaRN on (GUIDE §2).
        """
        get = model_config.get if isinstance(model_config, dict) else \
            lambda k, d=None: getattr(model_config, k, d)
        trained = int(get("max_position_embeddings"))
        dca = get("dual_chunk_attention_config")
        values: dict[str, Any] = {}
        if dca is not None:
            values["chunk_size"] = int(dca.get("chunk_size", 8192))
            values["local_size"] = int(dca.get("local_size", 1024))
            orig = dca.get("original_max_position_embeddings")
            values["yarn_scaling"] = bool(orig)
            values["original_max_position_embeddings"] = int(orig) if orig else \
                max(trained, values["chunk_size"])
        else:
            values = {"chunk_size": trained, "original_max_position_embeddings": trained}
        # YaRN's s from each query's own position (s = (p + 1) / trained length), not from the
        # whole prompt's length (vLLM's rule): measured on the default model over 16K tokens of
        # the ASV, the prompt-length rule raised NLL by 0.6 nats at 0-2K (where s <= 1 for every
        # query) and 0.34 at 8-16K; the per-position rule keeps 0-8K exact and gave 2.217 at 8-16K
        # (docs/BENCHMARKS.md). dca_yarn_per_position=False restores vLLM's rule.
        values["yarn_per_position"] = True
        known = {f.name for f in fields(cls)}
        for key, val in (overrides or {}).items():
            if key not in known:
                raise ValueError(f"unknown DCA option {key!r}; known: {', '.join(sorted(known))}")
            if val is not None:
                values[key] = val
        if "local_size" not in values:
            values["local_size"] = values["chunk_size"] // 8
        return cls(**values)


def plan_parts(cfg: DCAConfig, start: int, n: int) -> list[tuple[int, int, int, int, int, bool]]:
    """The partial attentions for n new tokens at positions [start, start+n) of one sequence.

    Returns (row_lo, row_hi, query_kind, key_lo, key_hi, causal): rows are offsets into the new
    tokens, keys are positions; per row the key ranges are disjoint and cover [0, position].
    causal=True marks the square of new rows against their own keys (key range == row range).
    """
    cl, parts, a, end = cfg.chunk_len, [], start, start + n
    while a < end:
        c0 = (a // cl) * cl                     # first position of this DCA chunk
        b = min(end, c0 + cl)
        lo, hi = a - start, b - start
        if b - a == 1:                          # one query: its chunk's keys up to itself
            parts.append((lo, hi, INTRA, c0, b, False))
        else:
            parts.append((lo, hi, INTRA, a, b, True))
            if a > c0:
                parts.append((lo, hi, INTRA, c0, a, False))
        if c0 > 0:
            split = min(max(c0 + cfg.local_size, a), b)   # first row past the local window
            if split > a:   # near rows: true distance to the previous chunk, fixed one to older
                parts.append((lo, split - start, SUCC, c0 - cl, c0, False))
                if c0 > cl:
                    parts.append((lo, split - start, INTER, 0, c0 - cl, False))
            if split < b:   # far rows: chunk_size - 1 toward every earlier chunk, one call
                parts.append((split - start, hi, INTER, 0, c0, False))
        a = b
    return parts


def query_positions(cfg: DCAConfig, pos: torch.Tensor):
    """Rotary positions of queries at absolute positions `pos` in each DCA part (keys sit at
    j % chunk_len): (intra, successive, inter), each shaped like pos. Only rows with
    r = pos % chunk_len < local_size attend the previous chunk as successive (plan_parts), so the
    paper's clamp at chunk_size - 1 never binds there."""
    r = pos % cfg.chunk_len
    return r, (r + cfg.chunk_len).clamp(max=cfg.chunk_size - 1), torch.full_like(pos, cfg.chunk_size - 1)


class DCAAttentionBackend(AttentionBackend):
    name = "dca"

    def __init__(self, rotary: RotaryEmbedding, head_dim: int, dca_config: DCAConfig):
        self.rotary, self.cfg = rotary, dca_config
        self.scale = head_dim ** -0.5

    def prepare(self, batch: AttentionBatch, dtype: torch.dtype) -> None:
        cfg = self.cfg
        pos = batch.positions
        r, succ_pos, inter_pos = query_positions(cfg, pos)
        inter_pos = inter_pos[:1]
        plans = [plan_parts(cfg, s.start_pos, s.num_new) for s in batch.seqs]
        kinds = {p[2] for plan in plans for p in plan}
        q_scale = None   # [N, 1, 1]: None where every query's scale is 1 (no row past the trained length)
        if cfg.yarn_per_position:
            longest = max((s.start_pos + s.num_new for s in batch.seqs), default=0)
            if cfg.yarn_scaling and longest > cfg.original_max_position_embeddings:
                q_scale = cfg.yarn_logit_scales(pos + 1)[:, None, None].to(dtype)
        else:
            seq_lens = batch.extras.get(SEQ_LENS_KEY)
            scales = []
            for i, s in enumerate(batch.seqs):
                length = seq_lens[i] if seq_lens is not None else s.start_pos + s.num_new
                scales.extend([cfg.yarn_logit_scale(length)] * s.num_new)
            if any(x != 1.0 for x in scales):
                q_scale = torch.tensor(scales, dtype=torch.float32, device=pos.device)[:, None, None].to(dtype)
        batch.extras["dca"] = {
            "k": self.rotary.cos_sin(r, dtype),  # keys and intra queries: position j % chunk_len
            "succ": self.rotary.cos_sin(succ_pos, dtype) if SUCC in kinds else None,
            "inter": self.rotary.cos_sin(inter_pos, dtype) if INTER in kinds else None,
            "plans": plans,
            "q_scale": q_scale,                  # [N, 1, 1] YaRN logit multiplier per query, in dtype
        }

    def prefix_cache_salt(self, num_prompt_tokens: int) -> bytes:
        """The keys are stored at positions that depend only on the token's own position, but a
        YaRN logit scale from the prompt's length changes every layer's KV above the first."""
        cfg = self.cfg
        if cfg.yarn_per_position:
            return b""
        scale = cfg.yarn_logit_scale(num_prompt_tokens)
        return b"" if scale == 1.0 else f"yarn:{scale!r}".encode()

    def forward(self, layer, q, k, v, batch: AttentionBatch) -> torch.Tensor:
        """q: [N, H, D]; k, v: [N, Hkv, D] un-rotated -> [N, H, D]."""
        ex = batch.extras["dca"]
        if ex["q_scale"] is not None:
            q = q * ex["q_scale"]
        cos, sin = ex["k"]
        k = apply_rotary(k, cos, sin)
        qs = {INTRA: apply_rotary(q, cos, sin)}
        if ex["succ"] is not None:
            qs[SUCC] = apply_rotary(q, *ex["succ"])
        if ex["inter"] is not None:
            qs[INTER] = apply_rotary(q, *ex["inter"])
        k_cache, v_cache = batch.kv_cache.k[layer], batch.kv_cache.v[layer]
        out = torch.empty_like(q)
        for s, plan in zip(batch.seqs, ex["plans"]):
            write_kv(k_cache, s.slots, s.start_pos, k[s.rows])
            write_kv(v_cache, s.slots, s.start_pos, v[s.rows])
            rows = {kind: x[s.rows] for kind, x in qs.items()}
            out[s.rows] = self.attend_one(layer, s, q[s.rows], rows, plan, k_cache, v_cache)
        return out

    def attend_one(self, layer, s, q, qs, plan, k_cache, v_cache) -> torch.Tensor:
        """One sequence (its k/v already in the cache). q: [n, H, D] un-rotated (YaRN-scaled);
        qs: kind -> the same rows rotated for that part kind. The sparse backend overrides this."""
        return self._attend_seq(qs, plan, s.slots, k_cache, v_cache)

    def _attend_seq(self, qs, plan, slots, k_cache, v_cache) -> torch.Tensor:
        """qs: kind -> [n, H, D] rotated queries of one sequence; plan from plan_parts."""
        q0 = qs[INTRA]
        if len(plan) == 1:   # one part covers every row (within the first chunk, decode there)
            return self._part(qs, plan[0], slots, k_cache, v_cache)[0]
        acc = torch.empty(q0.shape, dtype=torch.float32, device=q0.device)      # [n, H, D]
        lse = torch.empty(q0.shape[:2], dtype=torch.float32, device=q0.device)  # [n, H]
        filled = 0   # rows [0, filled) hold a partial result; a segment's first part fills it
        for part in plan:
            o, l = self._part(qs, part, slots, k_cache, v_cache)
            lo, hi = part[0], part[1]
            if lo >= filled:
                acc[lo:hi], lse[lo:hi], filled = o, l, hi
                continue
            # Exact log-sum-exp merge (the flash-attention merge), in place.
            a, m = acc[lo:hi], lse[lo:hi]
            new = torch.logaddexp(m, l)
            a.mul_(torch.exp(m - new)[..., None]).add_(o.float() * torch.exp(l - new)[..., None])
            m.copy_(new)
        return acc.to(q0.dtype)

    def _part(self, qs, part, slots, k_cache, v_cache):
        lo, hi, kind, k0, k1, causal = part
        keys, vals = read_kv(k_cache, slots, k0, k1), read_kv(v_cache, slots, k0, k1)
        return attend(qs[kind][lo:hi], keys, vals, causal=causal, scale=self.scale)
