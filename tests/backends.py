"""The four attention setups the engine composes (positions x prefill pattern), built directly
for kernel-level tests; `kernel` / `estimator` pin the sparse implementation."""
from __future__ import annotations

from turboctx.attention.backend import AttentionBackend
from turboctx.attention.dca import DCAConfig, DCAPositions
from turboctx.attention.dense import DensePattern
from turboctx.attention.rope import RopePositions
from turboctx.attention.sparse.config import SparseConfig
from turboctx.attention.sparse.prefill import SparsePattern


def dense_backend(rotary, head_dim: int) -> AttentionBackend:
    s = head_dim ** -0.5
    return AttentionBackend(RopePositions(rotary, s), DensePattern(s))


def dca_backend(rotary, head_dim: int, dca: DCAConfig) -> AttentionBackend:
    s = head_dim ** -0.5
    return AttentionBackend(DCAPositions(rotary, s, dca), DensePattern(s))


def sparse_backend(rotary, head_dim: int, sparse: SparseConfig | None = None, *,
                   dca: DCAConfig | None = None, kernel: str = "auto",
                   estimator: str = "auto") -> AttentionBackend:
    s = head_dim ** -0.5
    positions = RopePositions(rotary, s) if dca is None else DCAPositions(rotary, s, dca)
    return AttentionBackend(positions, SparsePattern(s, sparse, kernel=kernel, estimator=estimator))
