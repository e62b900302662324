"""Attention backends: the model hands un-rotated q/k/v to a backend, which owns positions,
the KV cache writes and the attention itself (dense now; DCA and sparse slot in here)."""
from turboctx.attention.backend import AttentionBackend, AttentionBatch, SeqChunk
from turboctx.attention.dense import DenseAttentionBackend

__all__ = ["AttentionBackend", "AttentionBatch", "SeqChunk", "DenseAttentionBackend"]
