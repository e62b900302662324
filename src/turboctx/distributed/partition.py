"""How a model is split over tensor-parallel ranks (Megatron-LM style), and the slicing of its tensors.

Rank r of N holds
  - query heads [q_start, q_end): a balanced contiguous range (sizes differ by at most one);
  - the KV heads those query heads read (`kv_heads`). When the ranks split the GQA groups evenly
    these are distinct per rank; a KV head whose group spans two ranks, or a model with fewer KV
    heads than ranks, is replicated on each rank that needs it. If the rank's query heads do not map
    onto its KV heads in equal consecutive groups (an uneven split such as 9 heads over 2 ranks),
    the rank stores one KV head per query head instead, so its attention sees plain equal groups;
  - rows [inter_start, inter_end) of the MLP's intermediate dimension;
  - column-parallel q/k/v and gate/up (their output rows), row-parallel o_proj and down_proj (their
    input columns; the partial products are summed by an all-reduce, and o_proj's bias is added
    once after it);
  - the whole embedding (replicated) and, on rank 0 only, the whole lm_head: rank 0 alone computes
    logits, so no logits cross ranks. Workers keep an empty lm_head.

Each rank reads every checkpoint tensor and keeps its slice, one tensor at a time, so loading
needs one full tensor of extra memory at most.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

import torch

from turboctx.config.architecture import ModelArchitecture
from turboctx.errors import InvalidRequestError
from turboctx.weights.kv_scales import is_kv_scale


@dataclass(frozen=True)
class TPShard:
    rank: int
    size: int
    q_start: int
    q_end: int
    kv_heads: tuple[int, ...]     # global index of each KV head this rank stores, in storage order
    inter_start: int
    inter_end: int

    @property
    def num_heads(self) -> int:
        return self.q_end - self.q_start

    @property
    def num_kv_heads(self) -> int:
        return len(self.kv_heads)

    @property
    def keeps_lm_head(self) -> bool:
        return self.rank == 0


def _balanced(n: int, size: int, rank: int) -> tuple[int, int]:
    return rank * n // size, (rank + 1) * n // size


def check_tensor_parallel(m: ModelArchitecture, size: int) -> None:
    """Every rank needs at least one query head and one intermediate row."""
    if size > m.num_attention_heads:
        raise InvalidRequestError(
            f"tensor_parallel_size={size} exceeds the model's {m.num_attention_heads} attention "
            f"heads: every rank needs one; use at most {m.num_attention_heads} (a divisor of it "
            f"gives every rank the same work)")
    if size > m.intermediate_size:
        raise InvalidRequestError(
            f"tensor_parallel_size={size} exceeds intermediate_size={m.intermediate_size}")


def plan_shard(m: ModelArchitecture, rank: int, size: int) -> TPShard:
    check_tensor_parallel(m, size)
    q0, q1 = _balanced(m.num_attention_heads, size, rank)
    need = [h // m.num_queries_per_kv for h in range(q0, q1)]     # KV head of each query head
    kv = sorted(set(need))
    group = len(need) // len(kv)
    uniform = len(need) == group * len(kv) and all(need[i] == kv[i // group] for i in range(len(need)))
    i0, i1 = _balanced(m.intermediate_size, size, rank)
    return TPShard(rank, size, q0, q1, tuple(kv) if uniform else tuple(need), i0, i1)


def local_architecture(m: ModelArchitecture, shard: TPShard) -> ModelArchitecture:
    """The architecture one rank builds: its heads and intermediate rows, the full hidden size."""
    return replace(m, num_attention_heads=shard.num_heads, num_key_value_heads=shard.num_kv_heads,
                   intermediate_size=shard.inter_end - shard.inter_start)


def _rows_of_heads(t: torch.Tensor, heads, head_dim: int) -> torch.Tensor:
    """t: [H * D, ...] -> the rows of the given heads, in that order: [len(heads) * D, ...]."""
    heads = list(heads)
    if heads == list(range(heads[0], heads[0] + len(heads))):
        return t.narrow(0, heads[0] * head_dim, len(heads) * head_dim)
    view = t.view(-1, head_dim, *t.shape[1:])                    # [H, D, ...]
    return view[torch.tensor(heads)].reshape(len(heads) * head_dim, *t.shape[1:])


def shard_tensor(name: str, t: torch.Tensor, m: ModelArchitecture, shard: TPShard) -> torch.Tensor:
    """The part of checkpoint tensor `name` (HF naming) that `shard` holds."""
    D = m.head_dim
    if is_kv_scale(name):                                            # a scalar or one per KV head
        return t if t.numel() == 1 else t.flatten()[list(shard.kv_heads)]
    if ".self_attn.q_proj." in name:
        return _rows_of_heads(t, range(shard.q_start, shard.q_end), D)
    if ".self_attn.k_proj." in name or ".self_attn.v_proj." in name:
        return _rows_of_heads(t, shard.kv_heads, D)
    if ".self_attn.o_proj.weight" in name:                           # [hidden, H * D]
        return t.narrow(1, shard.q_start * D, shard.num_heads * D)
    if ".mlp.gate_proj." in name or ".mlp.up_proj." in name:         # [I, hidden]
        return t.narrow(0, shard.inter_start, shard.inter_end - shard.inter_start)
    if ".mlp.down_proj.weight" in name:                              # [hidden, I]
        return t.narrow(1, shard.inter_start, shard.inter_end - shard.inter_start)
    if name == "lm_head.weight" and not shard.keeps_lm_head:
        return t[:0]
    return t              # norms, embedding, o_proj bias (added once after the all-reduce)


def shard_tensors(tensors: Iterable[tuple[str, torch.Tensor]], m: ModelArchitecture,
                  shard: TPShard) -> Iterator[tuple[str, torch.Tensor]]:
    for name, t in tensors:
        yield name, shard_tensor(name, t, m, shard)


def shard_sparse_config(cfg, shard: TPShard):
    """A SparseConfig whose per-head budgets (and scores) are those of this rank's query heads."""
    if getattr(cfg, "head_budgets", None) is None:
        return cfg
    cut = slice(shard.q_start, shard.q_end)
    scores = getattr(cfg, "head_scores", None)
    return replace(cfg, head_budgets=[layer[cut] for layer in cfg.head_budgets],
                      head_scores=None if scores is None else [layer[cut] for layer in scores])
