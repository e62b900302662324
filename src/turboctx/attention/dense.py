"""The dense prefill pattern: every key of every part, exactly.

Each part (a key range with its own query rotation, backend.Part) is one attention call returning
its log-sum-exp, and the parts of a row merge exactly by their log-sum-exp (the flash-attention
merge), in place, in float32.
"""
from __future__ import annotations

import torch

from turboctx.attention.backend import Part, SeqChunk, SeqQueries, causal_pairs
from turboctx.attention.ops import attend
from turboctx.kv_cache import SeqSlots, read_kv


class DensePattern:
    name = "dense"

    def __init__(self, scale: float):
        self.scale = scale

    def attend(self, layer: int, s: SeqChunk, queries: SeqQueries, parts: list[Part],
               k_cache: torch.Tensor, v_cache: torch.Tensor, positions=None) -> torch.Tensor:
        qs = queries.rotated
        if len(parts) == 1:   # one part covers every row (a decode row, a first chunk)
            return self.part(qs, parts[0], s.slots, k_cache, v_cache)[0]
        q0 = next(iter(qs.values()))
        acc = torch.empty(q0.shape, dtype=torch.float32, device=q0.device)      # [n, H, D]
        lse = torch.empty(q0.shape[:2], dtype=torch.float32, device=q0.device)  # [n, H]
        filled = 0   # rows [0, filled) hold a partial result; a segment's first part fills it
        for part in parts:
            o, l = self.part(qs, part, s.slots, k_cache, v_cache)
            if part.lo >= filled:
                acc[part.lo:part.hi], lse[part.lo:part.hi], filled = o, l, part.hi
                continue
            a, m = acc[part.lo:part.hi], lse[part.lo:part.hi]
            new = torch.logaddexp(m, l)
            a.mul_(torch.exp(m - new)[..., None]).add_(o.float() * torch.exp(l - new)[..., None])
            m.copy_(new)
        return acc.to(q0.dtype)

    def part(self, qs: dict[int, torch.Tensor], part: Part, slots: SeqSlots,
             k_cache: torch.Tensor, v_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """out [hi-lo, H, D], lse [hi-lo, H] of one part."""
        keys, vals = read_kv(k_cache, slots, part.k0, part.k1), read_kv(v_cache, slots, part.k0, part.k1)
        return attend(qs[part.kind][part.lo:part.hi], keys, vals, causal=part.causal, scale=self.scale)

    @staticmethod
    def chunk_dependent_from() -> None:
        return None

    @staticmethod
    def prompt_tail_dependent() -> int:
        return 0

    @staticmethod
    def attention_pairs(start: int, n: int, prompt_len: int) -> float:
        return causal_pairs(start, n)
