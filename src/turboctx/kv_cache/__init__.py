"""The KV cache: one preallocated tensor pair in blocks of token slots (cache.py), and the block
allocator with prefix caching (blocks.py)."""
from turboctx.kv_cache.blocks import BlockAllocator, block_hashes
from turboctx.kv_cache.cache import KVCache, SeqSlots, read_kv, write_kv

__all__ = ["KVCache", "SeqSlots", "read_kv", "write_kv", "BlockAllocator", "block_hashes"]
