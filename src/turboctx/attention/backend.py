"""The attention backend: positions x prefill pattern, over the KV cache.

Attention varies along two independent axes, each an object of its own:
  - positions (rope.py, dca.py): how q and k are rotated, and which key ranges a sequence's new
    rows read at which query rotation: its *parts*. Plain RoPE reads the chunk against itself
    (causal) and the older keys; DCA has intra / successive / inter parts with their own query
    positions. Positions also own the decode step in CUDA graphs (`graph_decode`).
  - the prefill pattern (dense.py, sparse/prefill.py): which keys of those parts a row attends.
    Dense attends all of them and merges the parts by log-sum-exp; vertical-slash sparse
    estimates a pattern from the chunk's last queries and attends only the selected keys.
`AttentionBackend(positions, pattern)` composes one of each: dense, DCA, sparse and DCA + sparse
are four pairs, not four classes. The model hands over un-rotated q/k/v; the backend rotates,
writes the cache and attends.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import torch

from turboctx.kv_cache import KVCache, SeqSlots, write_kv


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


def causal_pairs(first_pos: int, n: int) -> float:
    """Query-key pairs of n rows at positions [first_pos, first_pos + n), each attending every
    key up to its own position (the attention work a step cost model counts)."""
    return n * first_pos + n * (n + 1) / 2


class Part(NamedTuple):
    """One partial attention of a sequence's new rows [lo, hi) (offsets into its chunk) over the
    keys at positions [k0, k1), with the queries rotated as `kind` says (the positions object's
    own numbering). Per row the parts' key ranges are disjoint and cover [0, row position].
    causal: the square of new rows against their own keys (key range == row range)."""
    lo: int
    hi: int
    kind: int
    k0: int
    k1: int
    causal: bool


@dataclass
class SeqQueries:
    """One sequence's queries: un-rotated (YaRN-scaled where DCA scales) and rotated per kind."""
    q: torch.Tensor                          # [n, H, D]
    rotated: dict[int, torch.Tensor]         # kind -> [n, H, D]

    def rows(self, lo: int, hi: int) -> "SeqQueries":
        return SeqQueries(self.q[lo:hi], {k: x[lo:hi] for k, x in self.rotated.items()})


class Positions(Protocol):
    name: str

    def prepare(self, batch: AttentionBatch, dtype: torch.dtype) -> Any:
        """Per-step state (rotary tables, each sequence's parts as `state.parts`)."""

    def rotate(self, q: torch.Tensor, k: torch.Tensor, state) -> tuple[dict[int, torch.Tensor],
                                                                      torch.Tensor, torch.Tensor]:
        """q: [N, H, D], k: [N, Hkv, D] un-rotated -> (q rotated per kind, k rotated as stored
        in the cache, q as the queries' un-rotated form)."""

    def parts(self, start: int, n: int) -> list[Part]:
        """The parts of n new rows at positions [start, start + n)."""

    def selection_queries(self, queries: SeqQueries, start: int, m: int, last: int):
        """The last `last` queries as sparse pattern estimation scores them against keys [0, m):
        a tensor [last, H, D] or key segments [(k_lo, k_hi, q)] (sparse/pattern.py)."""

    def graph_decode(self):
        """The decode-in-CUDA-graphs form of these positions (step_extras + forward)."""


class Pattern(Protocol):
    name: str

    def attend(self, layer: int, s: SeqChunk, queries: SeqQueries, parts: list[Part],
               k_cache: torch.Tensor, v_cache: torch.Tensor, positions: Positions) -> torch.Tensor:
        """One sequence's attention output [n, H, D]; its k/v are in the cache already."""

    def chunk_dependent_from(self) -> int | None:
        """Sequence length from which a prefill chunk's output depends on where the chunk ends
        (sparse prefill picks its pattern from the chunk's last queries); None: never. The
        scheduler then cuts such chunks on a fixed grid, so a prompt's output does not depend on
        what else runs beside it."""

    def attention_pairs(self, start: int, n: int, prompt_len: int) -> float:
        """Query-key pairs n new rows after `start` cached tokens attend (the step cost model's
        attention work); prompt_len as in SeqChunk."""

    def prompt_tail_dependent(self) -> int:
        """Tokens at a prompt's end whose KV differs from that of the same positions inside a
        longer prompt (sparse prefill's dense tail); the prefix cache does not offer the chunks
        that hold them. 0: none."""


class AttentionBackend:
    """Computes attention for one layer of a batch: `prepare` once per step, `forward` per layer."""

    def __init__(self, positions: Positions, pattern: Pattern):
        self.positions, self.pattern = positions, pattern

    @property
    def name(self) -> str:
        """dense | dca | sparse | dca+sparse."""
        if self.positions.name == "rope":
            return self.pattern.name
        return self.positions.name + ("" if self.pattern.name == "dense" else "+" + self.pattern.name)

    def prepare(self, batch: AttentionBatch, dtype: torch.dtype) -> None:
        batch.extras["positions"] = self.positions.prepare(batch, dtype)

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                batch: AttentionBatch) -> torch.Tensor:
        """q: [N, H, D]; k, v: [N, Hkv, D] un-rotated -> [N, H, D]."""
        state = batch.extras["positions"]
        rotated, k, q = self.positions.rotate(q, k, state)
        k_cache, v_cache = batch.kv_cache.layer(layer)
        if len(batch.seqs) == 1:     # the long-prompt case: no scatter into a batch buffer
            return self._attend_seq(layer, batch.seqs[0], SeqQueries(q, rotated), k, v,
                                    state.parts[0], k_cache, v_cache)
        out = torch.empty_like(q)
        for s, parts in zip(batch.seqs, state.parts):
            queries = SeqQueries(q[s.rows], {kind: x[s.rows] for kind, x in rotated.items()})
            out[s.rows] = self._attend_seq(layer, s, queries, k[s.rows], v[s.rows], parts,
                                           k_cache, v_cache)
        return out

    def _attend_seq(self, layer, s, queries, k, v, parts, k_cache, v_cache) -> torch.Tensor:
        write_kv(k_cache, s.slots, s.start_pos, k)
        write_kv(v_cache, s.slots, s.start_pos, v)
        return self.pattern.attend(layer, s, queries, parts, k_cache, v_cache, self.positions)

    def graph_decode(self):
        """The form of this backend that a captured decode step runs (sparse prefill does not
        change decode: the positions alone decide it)."""
        return self.positions.graph_decode()

    def chunk_dependent_from(self) -> int | None:
        return self.pattern.chunk_dependent_from()

    def attention_pairs(self, start: int, n: int, prompt_len: int) -> float:
        return self.pattern.attention_pairs(start, n, prompt_len)

    def prompt_tail_dependent(self) -> int:
        return self.pattern.prompt_tail_dependent()
