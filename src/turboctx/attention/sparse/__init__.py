"""Vertical-slash sparse prefill, one job per file:

config.py            SparseConfig and the sparse_attention_config.json budgets file
prefill.py           SparsePattern: the prefill pattern (rows that run sparse, estimate, attend)
pattern.py           VSPattern and each head's selection from scores
scores.py            estimation: scores of the last queries (dispatch), then the selection
scores_triton.py     the fused Triton scoring kernel (CUDA)
blocks.py            the attended set's geometry: key-block lists, explicit mask, closed-form counts
attention.py         vertical-slash attention: the portable torch path and the dispatch
attention_triton.py  the fused Triton attention kernel (CUDA)
reference.py         float64 / torch references of the attention and the scores
stats.py             counts, density and timing; the recall observer of calibration
"""
from turboctx.attention.sparse.config import SparseConfig
from turboctx.attention.sparse.prefill import SparsePattern

__all__ = ["SparseConfig", "SparsePattern"]
