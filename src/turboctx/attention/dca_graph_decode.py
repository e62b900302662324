"""Dual Chunk Attention for one new token per sequence, with every length and offset on the device,
so that a decode step can be captured in a CUDA graph (engine/cuda_graph.py).

The eager DCA backend (dca.py) plans each query's parts in Python: a decode query at position p,
in DCA chunk c0 = p - r (r = p % chunk_len), attends to
  - intra: keys [c0, p], query rotated at r;
  - succ:  keys [c0 - chunk_len, c0), query at chunk_len + r, when r < local_size and c0 > 0;
  - inter: keys [0, c0 - chunk_len) when r < local_size, else [0, c0), query at chunk_size - 1.
Here those ranges are computed from the positions tensor, each part is one split-KV decode
attention (decode_kernel.py) over a cache range (empty ranges give lse -inf), and the three are
merged by log-sum-exp in float32, as the eager backend does. YaRN's logit scale is taken from
each query's own position (DCAConfig.yarn_per_position, the default); the prompt-length rule needs
host-side lengths, so that setting decodes eagerly (`graph_unsupported_reason`).
"""
from __future__ import annotations

import torch

from turboctx.attention.backend import AttentionBackend, AttentionBatch
from turboctx.attention.dca import DCAAttentionBackend, query_positions
from turboctx.attention.decode_kernel import decode_attention, rotary_store_kv
from turboctx.attention.kernels import merge_parts
from turboctx.models.layers import apply_rotary


def graph_unsupported_reason(dca: DCAAttentionBackend) -> str | None:
    cfg = dca.cfg
    if cfg.yarn_scaling and not cfg.yarn_per_position:
        return "DCA with YaRN's prompt-length rule (dca_yarn_per_position=False) decodes eagerly"
    return None


class GraphDCADecodeBackend(AttentionBackend):
    name = "dca-graph-decode"
    # Used only when asked (cuda_graphs=True) until the captured path has passed the GPU tests
    # (tests/test_cuda_graph_decode.py, gpu-marked); the CPU tests run its body uncaptured. Then
    # set this True, and GraphDecodeBackend.on_by_default for the sparse backend.
    on_by_default = False

    def __init__(self, dca: DCAAttentionBackend):
        self.rotary, self.cfg, self.scale = dca.rotary, dca.cfg, dca.scale

    def step_extras(self, pos: torch.Tensor, lens: torch.Tensor, starts: torch.Tensor,
                    dtype: torch.dtype, num_splits: int) -> dict:
        """Per-step tensors from positions pos [B], lengths lens [B] (0: a padding row) and first
        cache slots starts [B]: rotary tables of the three query positions, each part's cache
        range (first slot, length) and the YaRN logit scale [B, 1, 1]. Device ops only."""
        cfg, cl = self.cfg, self.cfg.chunk_len
        r, succ_pos, inter_pos = query_positions(cfg, pos)               # [B] each
        c0 = pos - r                                                     # first position of p's chunk
        live = lens > 0
        near = (r < cfg.local_size) & (c0 > 0)                           # attends the previous chunk as succ
        zero = torch.zeros_like(pos)
        ranges = (  # (first slot, length) per part
            (starts + c0, torch.where(live, r + 1, zero)),
            (starts + (c0 - cl).clamp(min=0), torch.where(live & near, torch.full_like(pos, cl), zero)),
            (starts, torch.where(live, torch.where(near, (c0 - cl).clamp(min=0), c0), zero)),
        )
        q_scale = cfg.yarn_logit_scales(pos + 1)[:, None, None].to(dtype) if cfg.yarn_scaling else None
        return {"dca_cos_sin": [self.rotary.cos_sin(x, dtype) for x in (r, succ_pos, inter_pos)],
                "seq_lens": lens, "slot_starts": starts, "dca_ranges": ranges,
                "q_scale": q_scale, "num_splits": num_splits}

    def forward(self, layer, q, k, v, batch: AttentionBatch) -> torch.Tensor:
        """q: [B, H, D]; k, v: [B, Hkv, D] un-rotated -> [B, H, D]."""
        ex = batch.extras
        if ex["q_scale"] is not None:
            q = q * ex["q_scale"]
        (cos_r, sin_r), succ, inter = ex["dca_cos_sin"]
        k_cache, v_cache = batch.kv_cache.k[layer], batch.kv_cache.v[layer]
        # keys (and intra queries) at r; the new k/v go to slot start + len - 1
        q_intra = rotary_store_kv(q, k, v, cos_r, sin_r, k_cache, v_cache, ex["seq_lens"], ex["slot_starts"])
        outs, lses = [], []
        for qk, (first, n) in zip((q_intra, apply_rotary(q, *succ), apply_rotary(q, *inter)),
                                  ex["dca_ranges"]):
            o, lse = decode_attention(qk, k_cache, v_cache, n, first, self.scale, ex["num_splits"])
            outs.append(o)
            lses.append(lse)                                             # [B, H], -inf: empty
        return merge_parts(outs, lses).to(q.dtype)

