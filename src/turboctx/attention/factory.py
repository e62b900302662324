"""Builds the attention backend of a model: its positions (plain RoPE or DCA) and its prefill
pattern (dense or vertical-slash sparse)."""
from __future__ import annotations

import torch

from turboctx.attention.backend import AttentionBackend
from turboctx.attention.dca import DCAConfig, DCAPositions
from turboctx.attention.dense import DensePattern
from turboctx.attention.rope import RopePositions
from turboctx.attention.rotary import RotaryEmbedding
from turboctx.attention.sparse.config import SparseConfig
from turboctx.attention.sparse.prefill import SparsePattern


def build_attention_backend(rotary: RotaryEmbedding, head_dim: int, dca: DCAConfig | None,
                            sparse: SparseConfig | None, device: torch.device | str = "cpu"
                            ) -> AttentionBackend:
    scale = head_dim ** -0.5
    rotary = rotary.to(device)
    positions = RopePositions(rotary, scale) if dca is None else DCAPositions(rotary, scale, dca)
    pattern = DensePattern(scale) if sparse is None else SparsePattern(scale, sparse)
    return AttentionBackend(positions, pattern)
