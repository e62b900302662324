"""The KV cache: allocated once, carved into fixed-size blocks of token slots.

Layout per layer: k, v: [num_kv_heads, num_slots, head_dim], num_slots = num_blocks * block_size.
A sequence owns a list of blocks (its block table). When those blocks are consecutive — the
usual case, the allocator prefers it — the sequence's keys are a zero-copy strided view
`k[:, start:end]`; otherwise they are gathered by slot index.

With kv_cache_dtype="fp8" the values are e4m3 with one bf16 scale per token and KV head
(fp8.py); `layer(i)` then gives FP8Layer views, which read_kv dequantizes and write_kv quantizes,
so every attention path reads the model's dtype.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from turboctx.kv_cache.fp8 import FP8_DTYPE, SCALE_DTYPE, FP8Layer, dequantize, quantize

CacheLayer = torch.Tensor | FP8Layer       # one layer's keys or values: [Hkv, slots, D]


class KVCache:
    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, num_blocks: int,
                 block_size: int, dtype: torch.dtype, device: torch.device | str,
                 storage_dtype: torch.dtype | None = None,
                 static_scales: dict[str, torch.Tensor] | None = None):
        """dtype: the model's (what attention reads); storage_dtype: what the cache holds (the
        model's dtype, or FP8_DTYPE); static_scales: {"k": [L, Hkv], "v": [L, Hkv]} float32 a
        checkpoint ships for the FP8 cache (None: computed per token)."""
        self.num_layers, self.num_kv_heads, self.head_dim = num_layers, num_kv_heads, head_dim
        self.num_blocks, self.block_size = num_blocks, block_size
        self.compute_dtype, self.device = dtype, torch.device(device)
        self.dtype = storage_dtype or dtype
        self.quantized = self.dtype == FP8_DTYPE
        shape = (num_layers, num_kv_heads, num_blocks * block_size, head_dim)
        # k, v: [L, Hkv, slots, D]; with FP8, k_scale, v_scale: [L, Hkv, slots]
        self.k = torch.empty(shape, dtype=self.dtype, device=device)
        self.v = torch.empty(shape, dtype=self.dtype, device=device)
        self.k_scale = self.v_scale = None
        self.static_scales = None
        if self.quantized:
            self.k_scale = torch.ones(shape[:-1], dtype=SCALE_DTYPE, device=device)
            self.v_scale = torch.ones(shape[:-1], dtype=SCALE_DTYPE, device=device)
            if static_scales is not None:
                self.static_scales = {n: t.to(device=self.device, dtype=torch.float32)
                                      for n, t in static_scales.items()}

    @property
    def num_slots(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def nbytes(self) -> int:
        scales = 0 if not self.quantized else self.k_scale.nbytes + self.v_scale.nbytes
        return self.k.nbytes + self.v.nbytes + scales

    def layer(self, i: int) -> tuple[CacheLayer, CacheLayer]:
        """Layer i's keys and values: [Hkv, slots, D] tensors, or FP8Layer views."""
        if not self.quantized:
            return self.k[i], self.v[i]
        st = self.static_scales
        return (FP8Layer(self.k[i], self.k_scale[i], self.compute_dtype, None if st is None else st["k"][i]),
                FP8Layer(self.v[i], self.v_scale[i], self.compute_dtype, None if st is None else st["v"][i]))

    def parts(self) -> list[torch.Tensor]:
        """Every tensor the cache holds, each indexed [L, Hkv, slots, ...] (what a kept context
        saves per layer: k, v and, with FP8, their scales)."""
        return [self.k, self.v] + ([self.k_scale, self.v_scale] if self.quantized else [])

    @staticmethod
    def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        """dtype: the storage dtype (FP8_DTYPE adds a bf16 scale per token, KV head, k and v)."""
        e = torch.empty((), dtype=dtype).element_size()
        scale = SCALE_DTYPE.itemsize if dtype == FP8_DTYPE else 0
        return 2 * num_layers * num_kv_heads * (head_dim * e + scale)


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


def _read(cache: torch.Tensor, slots: SeqSlots, start: int, end: int) -> torch.Tensor:
    """cache: [Hkv, num_slots, ...] -> the sequence's tokens [start, end) as [Hkv, end-start, ...]."""
    base = slots.contiguous_start
    if base is not None:
        return cache[:, base + start: base + end]
    return cache.index_select(1, slots.slot_ids(cache.device)[start:end])


def _write(cache: torch.Tensor, slots: SeqSlots, start: int, x: torch.Tensor) -> None:
    """Store x: [Hkv, n, ...] as the sequence's tokens [start, start+n)."""
    n = x.shape[1]
    base = slots.contiguous_start
    if base is not None:
        cache[:, base + start: base + start + n] = x
    else:
        cache.index_copy_(1, slots.slot_ids(cache.device)[start:start + n], x)


def read_kv(cache: CacheLayer, slots: SeqSlots, start: int, end: int) -> torch.Tensor:
    """One layer's keys or values -> the sequence's tokens [start, end) as [Hkv, end-start, D]
    in the model's dtype (a view when unquantized and consecutive; FP8 is dequantized)."""
    if isinstance(cache, FP8Layer):
        return dequantize(_read(cache.data, slots, start, end), _read(cache.scale, slots, start, end),
                          cache.dtype)
    return _read(cache, slots, start, end)


def write_kv(cache: CacheLayer, slots: SeqSlots, start: int, x: torch.Tensor) -> None:
    """Store x: [n, Hkv, D] as the sequence's tokens [start, start+n) (FP8: quantized)."""
    if isinstance(cache, FP8Layer):
        data, scale = quantize(x, cache.static_scale)           # [n, Hkv, D], [n, Hkv]
        _write(cache.data, slots, start, data.transpose(0, 1))
        _write(cache.scale, slots, start, scale.transpose(0, 1))
        return
    _write(cache, slots, start, x.transpose(0, 1))
