"""Picks and builds the attention backend from the engine's options."""
from __future__ import annotations

import torch

from turboctx.attention.backend import AttentionBackend
from turboctx.attention.dense import DenseAttentionBackend
from turboctx.config import EngineConfig, ModelConfig
from turboctx.errors import InvalidRequestError
from turboctx.models.layers import RotaryEmbedding


def make_rotary(m: ModelConfig, device: torch.device) -> RotaryEmbedding:
    return RotaryEmbedding(m.head_dim, m.rope_theta, m.rope_scaling, m.max_position_embeddings).to(device)


def make_attention_backend(m: ModelConfig, e: EngineConfig, options: dict,
                           device: torch.device) -> AttentionBackend:
    options = dict(options)
    unknown = set(options) - {"dca", "dca_chunk_size", "dca_local_size",
                              "original_max_position_embeddings", "sparse_threshold",
                              "sparse_config"}
    if unknown:
        raise InvalidRequestError(f"unknown engine option(s) {sorted(unknown)}")
    rotary = make_rotary(m, device)
    if options.get("dca") or (options.get("dca") is None and m.dual_chunk_attention_config):
        raise InvalidRequestError("dca is not available in this build yet")
    if e.attention == "sparse":
        raise InvalidRequestError("attention='sparse' is not available in this build yet")
    return DenseAttentionBackend(rotary, m.head_dim)
