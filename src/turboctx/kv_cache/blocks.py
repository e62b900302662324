"""Blocks of the KV cache: reference-counted, handed out as consecutive runs where possible, and
kept by the hash of the prefix whose KV they hold (prefix caching, least recently used first out).
"""
from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

from turboctx.errors import OutOfCacheError


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
