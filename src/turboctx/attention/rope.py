"""Plain rotary positions: every query and key rotated at its own position.

A prefill chunk of n rows at [start, start + n) has two parts: the chunk against itself (causal)
and the chunk against every older key; a decode row has one, over all its keys. The dense
pattern merges the two by log-sum-exp, which is how a chunk attends to cache + itself at full
kernel speed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from turboctx.attention.backend import AttentionBatch, Part, SeqQueries
from turboctx.attention.rotary import RotaryEmbedding, apply_rotary

ROPE = 0     # the one query rotation


@dataclass
class RopeState:
    cos_sin: tuple[torch.Tensor, torch.Tensor]    # [N, D] each
    parts: list[list[Part]]                       # per sequence


class RopePositions:
    name = "rope"

    def __init__(self, rotary: RotaryEmbedding, scale: float):
        self.rotary, self.scale = rotary, scale

    def prepare(self, batch: AttentionBatch, dtype: torch.dtype) -> RopeState:
        return RopeState(self.rotary.cos_sin(batch.positions, dtype),
                         [self.parts(s.start_pos, s.num_new) for s in batch.seqs])

    def rotate(self, q, k, state: RopeState):
        cos, sin = state.cos_sin
        return {ROPE: apply_rotary(q, cos, sin)}, apply_rotary(k, cos, sin), q

    @staticmethod
    def parts(start: int, n: int) -> list[Part]:
        if n == 1:                   # decode: one query over the whole cache, no mask needed
            return [Part(0, 1, ROPE, 0, start + 1, False)]
        square = Part(0, n, ROPE, start, start + n, True)
        return [square] if start == 0 else [square, Part(0, n, ROPE, 0, start, False)]

    @staticmethod
    def selection_queries(queries: SeqQueries, start: int, m: int, last: int) -> torch.Tensor:
        return queries.rotated[ROPE][-last:]       # at their true positions, like the keys

    def graph_decode(self) -> "RopeGraphDecode":
        return RopeGraphDecode(self.rotary, self.scale)


class RopeGraphDecode:
    """RopePositions' decode step with static shapes, for a CUDA graph (engine/cuda_graph.py):
    one new token per sequence, lengths and cache offsets read from device buffers; rotary, the
    cache write and split-KV attention are Triton launches (decode_kernel.py)."""
    name = "rope-graph-decode"

    def __init__(self, rotary: RotaryEmbedding, scale: float):
        from turboctx.attention import decode_kernel   # Triton: ImportError where it is missing
        self.rotary, self.scale, self.kernels = rotary, scale, decode_kernel

    def step_extras(self, pos: torch.Tensor, lens: torch.Tensor, starts: torch.Tensor,
                    dtype: torch.dtype, num_splits: int) -> dict:
        """Per-step tensors (device ops only): rotary tables [B, D], lengths, first slots."""
        return {"cos_sin": self.rotary.cos_sin(pos, dtype), "seq_lens": lens, "slot_starts": starts,
                "num_splits": num_splits}

    def forward(self, layer, q, k, v, batch: AttentionBatch) -> torch.Tensor:
        cos, sin = batch.extras["cos_sin"]                                  # [B, D]
        lens, starts = batch.extras["seq_lens"], batch.extras["slot_starts"]
        k_cache, v_cache = batch.kv_cache.layer(layer)
        q = self.kernels.rotary_store_kv(q, k, v, cos, sin, k_cache, v_cache, lens, starts)  # [B, H, D]
        return self.kernels.decode_attention(q, k_cache, v_cache, lens, starts, self.scale,
                                batch.extras["num_splits"])[0]
