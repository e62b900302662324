"""The KV cache: allocated once, carved into fixed-size blocks of token slots.

Layout per layer: k, v: [num_kv_heads, num_slots, head_dim], num_slots = num_blocks * block_size.
A sequence owns a list of blocks (its block table). When those blocks are consecutive — the
usual case, the allocator prefers it — the sequence's keys are a zero-copy strided view
`k[:, start:end]`; otherwise they are gathered by slot index.
"""
from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from turboctx.errors import OutOfCacheError


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


def block_hashes(token_ids: list[int], block_size: int, salt: bytes = b"") -> list[bytes]:
    """Chained hash of each full block: h_i = sha256(h_{i-1} + token ids of block i), so equal
    hashes mean equal prefixes. salt separates KV that depends on more than the tokens."""
    h = hashlib.sha256(b"turboctx-prefix" + salt).digest()
    out = []
    for i in range(len(token_ids) // block_size):
        h = hashlib.sha256(h + array("q", token_ids[i * block_size:(i + 1) * block_size]).tobytes()).digest()
        out.append(h)
    return out


class BlockAllocator:
    """Hands out cache blocks with reference counts; prefers one consecutive run so reads stay
    zero-copy.

    Prefix caching (vLLM-style): a full prompt block whose KV is complete is registered under its
    chained hash. When its last user lets go it stays, still valid, in an LRU and is handed out
    again to a request whose prompt starts with the same tokens. New blocks come from the free pool
    first; least recently used cached blocks are evicted (their hash dropped) only when it is empty.
    """

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self._free = [True] * num_blocks      # in the free pool: no user, no cached prefix
        self._num_pool = num_blocks
        self._ref = [0] * num_blocks
        self._hash: dict[int, bytes] = {}      # block -> hash of the prefix whose KV it holds
        self._cached: dict[bytes, int] = {}    # hash -> block
        self._lru: OrderedDict[int, None] = OrderedDict()   # unreferenced cached blocks, oldest first

    @property
    def num_free(self) -> int:
        """Blocks a new request can get: the free pool plus evictable cached blocks."""
        return self._num_pool + len(self._lru)

    @property
    def num_cached(self) -> int:
        return len(self._cached)

    def ref_count(self, block: int) -> int:
        return self._ref[block]

    def match(self, hashes: list[bytes]) -> list[int]:
        """The blocks of the longest cached prefix of this chain of block hashes."""
        out = []
        for h in hashes:
            b = self._cached.get(h)
            if b is None:
                break
            out.append(b)
        return out

    def can_allocate(self, n: int, reuse: list[int] = ()) -> bool:
        """n blocks in all, of which `reuse` (from match) are shared rather than new."""
        revived = sum(1 for b in reuse if self._ref[b] == 0)   # leave the LRU when reused
        return n - len(reuse) <= self.num_free - revived

    def allocate(self, n: int, reuse: list[int] = ()) -> list[int]:
        """A block table of n blocks: `reuse` first (a reference is taken on each), then new ones,
        right after the last reused block when that run is free."""
        reuse = list(reuse)
        if n > self.num_blocks:
            raise OutOfCacheError(f"a request needs {n} KV blocks but the cache has {self.num_blocks}")
        if not self.can_allocate(n, reuse):
            raise OutOfCacheError(f"{n - len(reuse)} KV blocks asked for, {self.num_free} free")
        for b in reuse:
            if b not in self._hash:
                raise RuntimeError(f"KV block {b} holds no cached prefix and cannot be shared")
            if self._ref[b] == 0:
                del self._lru[b]
            self._ref[b] += 1
        return reuse + self._take(n - len(reuse), reuse[-1] + 1 if reuse else None)

    def register(self, block: int, h: bytes) -> None:
        """Block `block` (in use) now holds the complete KV of the prefix hashed h."""
        if self._ref[block] == 0:
            raise RuntimeError(f"KV block {block} is not in use and cannot be registered")
        if block in self._hash or h in self._cached:
            return        # reused already, or another request computed the same prefix first
        self._hash[block] = h
        self._cached[h] = block

    def free(self, blocks: list[int]) -> None:
        """Drops one reference on each block. A cached block left unreferenced goes to the LRU,
        the tail of a prefix before its head, so the head (useful to more prompts) stays longest."""
        for b in reversed(blocks):
            if self._ref[b] == 0:
                raise RuntimeError(f"KV block {b} freed twice")
            self._ref[b] -= 1
            if self._ref[b] == 0:
                if b in self._hash:
                    self._lru[b] = None
                else:
                    self._free[b] = True
                    self._num_pool += 1

    def reset_prefix_cache(self) -> int:
        """Forgets every unreferenced cached prefix; returns how many blocks were freed."""
        n = len(self._lru)
        self._evict(n)
        return n

    def _evict(self, n: int) -> None:
        for _ in range(n):
            b, _ = self._lru.popitem(last=False)
            del self._cached[self._hash.pop(b)]
            self._free[b] = True
            self._num_pool += 1

    def _take(self, n: int, after: int | None) -> list[int]:
        if n > self._num_pool:
            self._evict(n - self._num_pool)
        if after is not None and after + n <= self.num_blocks and all(self._free[after:after + n]):
            run = after
        else:
            run = self._find_run(n)
        blocks = list(range(run, run + n)) if run is not None else \
            [i for i, f in enumerate(self._free) if f][:n]
        for b in blocks:
            self._free[b] = False
            self._ref[b] = 1
        self._num_pool -= n
        return blocks

    def _find_run(self, n: int) -> int | None:
        if n == 0:
            return None
        run_start, run_len = 0, 0
        for i, f in enumerate(self._free):
            if f:
                if run_len == 0:
                    run_start = i
                run_len += 1
                if run_len == n:
                    return run_start
            else:
                run_len = 0
        return None
