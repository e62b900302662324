"""The attention backend interface and the per-step batch description it receives."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from turboctx.kv_cache import KVCache, SeqSlots


@dataclass
class SeqChunk:
    """One sequence's new tokens in this step."""
    row_start: int       # first row of its tokens in the flattened batch
    row_end: int         # one past the last row
    start_pos: int       # tokens already in the cache before these (position of the first new token)
    slots: SeqSlots      # where the sequence lives in the cache
    prompt_len: int = 0  # the prompt's length when these rows are prompt tokens (0: not known);
                         # sparse prefill runs the prompt's last tokens dense (SparseConfig.dense_tail)

    @property
    def num_new(self) -> int:
        return self.row_end - self.row_start

    @property
    def rows(self) -> slice:
        return slice(self.row_start, self.row_end)


@dataclass
class AttentionBatch:
    seqs: list[SeqChunk]
    positions: torch.Tensor          # [N] int64 absolute positions of the new tokens
    kv_cache: KVCache
    extras: dict[str, Any] = field(default_factory=dict)  # per-step state a backend precomputes


class AttentionBackend:
    """Computes attention for one layer of a batch.

    `prepare` runs once per step (positions -> rotary tables, masks, ...); `forward` runs for
    every layer: it receives un-rotated q/k/v, applies positions its own way, writes the cache and
    returns the attention output.
    """

    name = "base"

    def prepare(self, batch: AttentionBatch, dtype: torch.dtype) -> None:
        raise NotImplementedError

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                batch: AttentionBatch) -> torch.Tensor:
        """q: [N, H, D]; k, v: [N, Hkv, D] -> [N, H, D]."""
        raise NotImplementedError

    def prefix_cache_salt(self, num_prompt_tokens: int) -> bytes:
        """What, besides the token ids, the cached KV of a prompt of this length depends on
        (prefix caching shares KV only between prompts with the same salt)."""
        return b""

    def prompt_tail_dependent(self) -> int:
        """Tokens at a prompt's end whose KV differs from that of the same positions inside a
        longer prompt (sparse prefill's dense tail); the prefix cache does not offer the chunks
        that hold them. 0: none."""
        return 0

    def chunk_dependent_from(self) -> int | None:
        """Sequence length from which a prefill chunk's output depends on where the chunk ends
        (sparse prefill picks its pattern from the chunk's last queries); None: never. The
        scheduler then cuts such chunks on a fixed grid, so a prompt's output does not depend on
        what else runs beside it."""
        return None
