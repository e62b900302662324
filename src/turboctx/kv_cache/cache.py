"""The KV cache: allocated once, carved into fixed-size blocks of token slots.

Layout per layer: k, v: [num_kv_heads, num_slots, head_dim], num_slots = num_blocks * block_size.
A sequence owns a list of blocks (its block table). When those blocks are consecutive — the
usual case, the allocator prefers it — the sequence's keys are a zero-copy strided view
`k[:, start:end]`; otherwise they are gathered by slot index.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


class KVCache:
    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, num_blocks: int,
                 block_size: int, dtype: torch.dtype, device: torch.device | str):
        self.num_layers, self.num_kv_heads, self.head_dim = num_layers, num_kv_heads, head_dim
        self.num_blocks, self.block_size = num_blocks, block_size
        self.dtype, self.device = dtype, torch.device(device)
        shape = (num_layers, num_kv_heads, num_blocks * block_size, head_dim)
        # k, v: [L, Hkv, slots, D]
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)

    @property
    def num_slots(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    @staticmethod
    def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


@dataclass
class SeqSlots:
    """Where one sequence's tokens live in the cache. The block table is fixed once allocated."""
    block_table: list[int] = field(default_factory=list)
    block_size: int = 1
    _slot_ids: torch.Tensor | None = None

    def __post_init__(self):
        bt = self.block_table
        consecutive = bool(bt) and all(b - a == 1 for a, b in zip(bt, bt[1:]))
        # computed once: the attention of every layer asks for it several times per step
        self.contiguous_start: int | None = bt[0] * self.block_size if consecutive else None

    @property
    def capacity(self) -> int:
        return len(self.block_table) * self.block_size

    def slot_ids(self, device) -> torch.Tensor:
        """[capacity] int64 slot of each token position."""
        if self._slot_ids is None or self._slot_ids.numel() != self.capacity:
            blocks = torch.tensor(self.block_table, dtype=torch.int64)
            offs = torch.arange(self.block_size, dtype=torch.int64)
            self._slot_ids = (blocks[:, None] * self.block_size + offs[None, :]).flatten().to(device)
        return self._slot_ids


def read_kv(cache: torch.Tensor, slots: SeqSlots, start: int, end: int) -> torch.Tensor:
    """cache: [Hkv, num_slots, D] -> the sequence's tokens [start, end) as [Hkv, end-start, D]."""
    base = slots.contiguous_start
    if base is not None:
        return cache[:, base + start: base + end]
    return cache.index_select(1, slots.slot_ids(cache.device)[start:end])


def write_kv(cache: torch.Tensor, slots: SeqSlots, start: int, x: torch.Tensor) -> None:
    """Store x: [n, Hkv, D] as the sequence's tokens [start, start+n)."""
    n = x.shape[0]
    base = slots.contiguous_start
    if base is not None:
        cache[:, base + start: base + start + n] = x.transpose(0, 1)
    else:
        cache.index_copy_(1, slots.slot_ids(cache.device)[start:start + n], x.transpose(0, 1))
