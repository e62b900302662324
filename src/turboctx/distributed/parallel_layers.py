"""The layers that differ on a tensor-parallel rank, swapped into a model built with its local shapes.

Column-parallel q/k/v and gate/up need nothing special: a rank's model is built from its local
config (distributed/partition.py), so those layers simply have fewer output rows. Row-parallel
o_proj and down_proj produce partial sums that are all-reduced; their bias is added once, after.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from turboctx.distributed.partition import TPShard


class RowParallelLinear(nn.Linear):
    """y = all_reduce(x_local @ W_local^T) + b, with W_local the rank's input columns of W."""

    def __init__(self, in_features: int, out_features: int, bias: bool, group, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)                     # [N, out]: this rank's partial sum
        dist.all_reduce(y, group=self.group)
        return y if self.bias is None else y + self.bias


def _row_parallel(layer: nn.Linear, group) -> RowParallelLinear:
    w = layer.weight
    return RowParallelLinear(layer.in_features, layer.out_features, layer.bias is not None, group,
                             device=w.device, dtype=w.dtype)


def parallelize_model(model: nn.Module, shard: TPShard, group) -> nn.Module:
    """In place, on a model built (on the meta device) from the rank's local config: row-parallel
    o_proj / down_proj, and an empty lm_head on ranks that compute no logits."""
    for layer in model.model.layers:
        layer.self_attn.o_proj = _row_parallel(layer.self_attn.o_proj, group)
        layer.mlp.down_proj = _row_parallel(layer.mlp.down_proj, group)
    if not shard.keeps_lm_head and not model.config.tie_word_embeddings:
        w = model.lm_head.weight                          # [V, hidden] -> [0, hidden]
        model.lm_head.weight = nn.Parameter(w.new_empty(0, w.shape[1]), requires_grad=False)
        model.lm_head.out_features = 0
    return model
