"""Kept contexts through an engine's KV cache: the KV of a prompt prefix goes from the prefix
cache's blocks to the RAM and disk tiers (contexts/store.py), and back into free blocks that are
then registered in the prefix cache, so a prompt that starts with it computes only the rest.

A context is loaded only where it is valid: the same fingerprint (contexts/fingerprint.py), the
same tokens, whole and with matching checksums. Anything else is discarded with a one-line
warning, and the prompt is prefilled as if nothing had been kept.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from turboctx.contexts.fingerprint import differences, engine_fingerprint, fingerprint_digest
from turboctx.contexts.kv_file import (PIECE_BYTES, CorruptContextError, as_bytes,
                                       material_digest, read_parts, read_tokens)
from turboctx.contexts.store import ContextMeta, ContextStore, check_name, write_context
from turboctx.errors import TurboctxError
from turboctx.kv_cache import SeqSlots, block_hashes
from turboctx.kv_cache.cache import read_kv

log = logging.getLogger("turboctx")


@dataclass
class KeepResult:
    name: str
    num_tokens: int          # tokens whose KV was kept (whole blocks of the prefix)
    nbytes: int
    seconds: float
    tiers: list[str]         # where it was written: "ram", "disk"
    warnings: list[str] = field(default_factory=list)


@dataclass
class LoadResult:
    name: str
    num_tokens: int
    tier: str                # "gpu" (already in the prefix cache), "ram" or "disk"
    nbytes: int
    seconds: float
    warnings: list[str] = field(default_factory=list)

    @property
    def gb_per_s(self) -> float:
        return self.nbytes / 1e9 / self.seconds if self.seconds > 0 else 0.0


class KeptContexts:
    """One engine's view of a ContextStore (LLMEngine.kept_contexts)."""

    def __init__(self, engine, store: ContextStore):
        if engine.config.parallel.tensor_parallel_size != 1:
            raise TurboctxError("kept contexts need tensor_parallel_size=1 (each rank holds part "
                                "of the KV); keep contexts on one GPU")
        if not engine.config.cache.enable_prefix_caching:
            raise TurboctxError("kept contexts are loaded through the prefix cache; turn it on "
                                "(drop --no-enable-prefix-caching)")
        self.engine, self.store = engine, store
        self.fingerprint = engine_fingerprint(engine)
        self.digest = fingerprint_digest(self.fingerprint)
        self._index: tuple[tuple, list[ContextMeta]] | None = None

    @property
    def cache(self):
        return self.engine.worker.kv_cache

    @property
    def block_size(self) -> int:
        return self.cache.block_size

    # -- keep -----------------------------------------------------------------------------------
    def keep(self, name: str, token_ids: list[int]) -> KeepResult:
        """Saves the KV of the longest run of whole blocks of token_ids in the prefix cache
        (normally: every whole block, right after a prompt that starts with them ran)."""
        check_name(name)
        t0 = time.perf_counter()
        hashes = block_hashes(token_ids, self.block_size)
        blocks = self.engine.allocator.match(hashes)
        if not blocks:
            raise TurboctxError(f"nothing to keep as {name!r}: the KV of its first "
                                f"{self.block_size} tokens is not in the prefix cache; run a prompt "
                                f"that starts with them first")
        n, c = len(blocks) * self.block_size, self.cache
        part_shape = [c.num_kv_heads, n, c.head_dim]
        # one part per layer for k and v; with the FP8 cache, each part's scales follow its values
        part_bytes = c.num_kv_heads * n * (c.head_dim * c.k.element_size() +
                                           (c.k_scale.element_size() if c.quantized else 0))
        meta = ContextMeta(name=name, fingerprint=self.fingerprint, digest=self.digest,
                           material_digest=material_digest(token_ids),
                           num_material_tokens=len(token_ids), num_tokens=n,
                           last_block_hash=hashes[len(blocks) - 1].hex(), part_shape=part_shape,
                           dtype=str(c.dtype).removeprefix("torch."), num_parts=2 * c.num_layers,
                           part_bytes=part_bytes, piece_bytes=PIECE_BYTES)
        slots = SeqSlots(blocks, self.block_size)

        def parts():
            for layer in range(c.num_layers):
                for t, scale in ((c.k, c.k_scale), (c.v, c.v_scale)):
                    x = read_kv(t[layer], slots, 0, n)            # [Hkv, n, D], as stored
                    if scale is None:
                        yield x
                    else:                                         # + [Hkv, n] scales
                        yield torch.cat([as_bytes(x.contiguous()),
                                         as_bytes(read_kv(scale[layer], slots, 0, n).contiguous())])

        tiers, warnings = write_context(self.store, meta, token_ids, parts(), c.device)
        for w in warnings:
            log.warning(w)
        self._index = None
        return KeepResult(name, n, meta.nbytes, time.perf_counter() - t0, tiers, warnings)

    # -- load -----------------------------------------------------------------------------------
    def load(self, name: str, token_ids: list[int] | None = None) -> LoadResult | None:
        """Puts context `name` into the prefix cache. token_ids: the material it must have been
        made from (None: take it as it is, e.g. when a prompt's block hashes matched it). None
        when it is not kept or not valid here (each reason logged as a warning)."""
        check_name(name)
        warnings: list[str] = []
        for tier, folder, meta in self.store.locations(name):
            why = self._unusable(meta, folder, token_ids)
            if why is None:
                t0 = time.perf_counter()
                try:
                    loaded = self._load_blocks(folder, meta)
                except CorruptContextError as e:
                    why = f"it is damaged ({e})"
            if why is not None:
                warnings.append(f"kept context {name!r} in {tier.name} not used: {why}; "
                                f"discarded, the prompt is computed afresh")
                log.warning(warnings[-1])
                self.store.remove(name, tier)
                self._index = None
                continue
            self.store.touch(folder, meta)
            return LoadResult(name, meta.num_tokens, tier.name if loaded else "gpu",
                              meta.nbytes if loaded else 0, time.perf_counter() - t0, warnings)
        return None if not warnings else LoadResult(name, 0, "none", 0, 0.0, warnings)

    def _unusable(self, meta: ContextMeta | None, folder, token_ids: list[int] | None) -> str | None:
        if meta is None:
            return "its meta.json is missing or unreadable"
        if meta.digest != self.digest:
            diff = ", ".join(differences(meta.fingerprint, self.fingerprint)) or "format"
            return f"it was made with another setup (differs in: {diff})"
        if token_ids is not None:
            if meta.num_material_tokens != len(token_ids) or \
                    meta.material_digest != material_digest(token_ids):
                return "it was made from other material (the document tokens differ)"
            try:
                if read_tokens(folder / "tokens.bin") != list(token_ids):
                    return "its tokens.bin differs from the material"
            except OSError as e:
                return f"its tokens.bin cannot be read ({e.strerror or e})"
        return None

    def _load_blocks(self, folder, meta: ContextMeta) -> bool:
        """Reads kv.bin into newly allocated blocks and registers them; False when the prefix
        cache holds every block already. Raises CorruptContextError (nothing registered)."""
        bs, alloc, c = self.block_size, self.engine.allocator, self.cache
        try:
            hashes = [bytes.fromhex(h) for h in
                      self._chain(read_tokens(folder / "tokens.bin"), meta.num_tokens)]
        except (OSError, ValueError) as e:
            raise CorruptContextError(f"tokens.bin: {e}") from None
        if not hashes or hashes[-1].hex() != meta.last_block_hash:
            raise CorruptContextError("tokens.bin does not give the block hashes kept")
        nb = len(hashes)
        have = alloc.match(hashes)
        if len(have) == nb:
            return False
        if not alloc.can_allocate(nb, have):
            raise TurboctxError(f"kept context {meta.name!r} needs {nb - len(have)} free KV blocks, "
                                f"{alloc.num_free} are free; wait for running requests or raise "
                                f"the cache size")
        table = alloc.allocate(nb, have)
        new = SeqSlots(table[len(have):], bs)
        first, n = len(have) * bs, meta.num_tokens
        hkv, _, d = meta.part_shape

        values = hkv * n * d * c.k.element_size()

        def put(dst: torch.Tensor, src: torch.Tensor) -> None:
            """src [Hkv, n - first, ...] into the new blocks of dst [Hkv, slots, ...]."""
            if new.contiguous_start is not None:
                dst[:, new.contiguous_start:new.contiguous_start + n - first].copy_(src)
            else:
                dst.index_copy_(1, new.slot_ids(dst.device), src)

        def on_part(p: int, staging: torch.Tensor) -> None:
            layer, is_k = p // 2, p % 2 == 0
            put((c.k if is_k else c.v)[layer], staging[:values].view(c.dtype).view(hkv, n, d)[:, first:])
            if c.quantized:
                scale = (c.k_scale if is_k else c.v_scale)[layer]          # [Hkv, slots]
                put(scale, staging[values:].view(scale.dtype).view(hkv, n)[:, first:])

        staging = torch.empty(meta.part_bytes, dtype=torch.uint8, device=c.device)
        try:
            read_parts(folder / "kv.bin", meta.num_parts, meta.part_bytes, meta.piece_bytes,
                       meta.checksums, staging, on_part)
        except BaseException:
            alloc.free(table)           # never registered: the new blocks go back to the pool
            raise
        for i in range(len(have), nb):
            alloc.register(table[i], hashes[i])
        alloc.free(table)               # unreferenced, cached: the next prompt takes them
        return True

    def _chain(self, token_ids: list[int], num_tokens: int) -> list[str]:
        return [h.hex() for h in block_hashes(token_ids[:num_tokens], self.block_size)]

    # -- a prompt that starts with a kept context -----------------------------------------------
    def load_for_prompt(self, hashes: list[bytes]) -> LoadResult | None:
        """hashes: a prompt's block hashes. Loads the longest kept context of this setup that the
        prompt starts with, unless the prefix cache has it already."""
        best = None
        for m in self._metas():
            nb = m.num_tokens // self.block_size
            if m.digest == self.digest and 0 < nb <= len(hashes) and \
                    hashes[nb - 1].hex() == m.last_block_hash and (best is None or nb > best[0]):
                best = (nb, m)
        if best is None:
            return None
        nb, m = best
        if len(self.engine.allocator.match(hashes[:nb])) == nb:
            return None
        try:
            res = self.load(m.name)
        except TurboctxError as e:          # no room now: the prompt is prefilled instead
            log.warning("kept context %r not loaded: %s", m.name, e)
            return None
        if res is not None and res.num_tokens:
            log.info("kept context %r: %d tokens loaded from %s in %.2f s (%.1f GB/s)", m.name,
                     res.num_tokens, res.tier, res.seconds, res.gb_per_s)
        return res

    def _metas(self) -> list[ContextMeta]:
        """The store's contexts, listed again only when a tier folder changed."""
        key = tuple(_mtime(t.root) for t in self.store.tiers)
        if self._index is None or self._index[0] != key:
            self._index = (key, self.store.metas())
        return self._index[1]


def _mtime(path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0
