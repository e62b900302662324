"""Pattern estimation: the last queries' scores of every key column and block diagonal, then each
head's selection (pattern.py). On CUDA the fused Triton kernel (scores_triton.py) computes the
scores; elsewhere the torch reference does (reference.py).
"""
from __future__ import annotations

import torch

from turboctx.attention.sparse.pattern import VSPattern, select_vertical_slash
from turboctx.attention.sparse.reference import reference_vertical_slash_scores


def vertical_slash_scores(q_last, k, q_pos0: int, *, scale: float, block_size: int,
                          kernel: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """vert [H, m], band [H, nb] (pattern.py says what they sum). kernel: 'triton' (the fused kernel,
    CUDA), 'torch' (the reference), 'auto' (triton on CUDA, else torch)."""
    if kernel == "triton" or (kernel == "auto" and k.device.type == "cuda"):
        from turboctx.attention.sparse.scores_triton import vertical_slash_scores_triton
        return vertical_slash_scores_triton(q_last, k, q_pos0, scale=scale, block_size=block_size)
    return reference_vertical_slash_scores(q_last, k, q_pos0, scale=scale, block_size=block_size)


def estimate_vertical_slash(q_last, k: torch.Tensor, q_pos0: int, budgets: list[tuple[int, int]],
                            *, scale: float, block_size: int, sink_tokens: int = 30,
                            local_diagonals: int = 100, kernel: str = "auto") -> VSPattern:
    """Scores of the last queries, then each head's top columns and bands (see the module doc).

    q_last: [L, H, D] rotated at positions q_pos0 .. q_pos0+L-1, or DCA segments;
    k: [Hkv, m, D], every key the chunk sees, m >= q_pos0 + L.
    """
    vert, band = vertical_slash_scores(q_last, k, q_pos0, scale=scale, block_size=block_size,
                                       kernel=kernel)
    return select_vertical_slash(vert, band, budgets, block_size=block_size,
                                 sink_tokens=sink_tokens, local_diagonals=local_diagonals)
