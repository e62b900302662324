"""Helpers of the sparse backend tests: which rows of a prefill chunk should run vertical-slash
(written out row by row from the documented rule, independent of the backends' arithmetic), and
a prompt fed through a backend chunk by chunk."""
from __future__ import annotations

import torch

from turboctx.attention.backend import AttentionBatch, SeqChunk


def expected_sparse_rows(start: int, n: int, threshold: int, prompt_len: int = 0,
                         tail: int = 0) -> tuple[int, int] | None:
    """Rows at positions >= threshold, not among the prompt's last `tail` tokens, in a chunk of
    more than one row, when at least two such rows exist; every other row attends densely.
    (a, b): chunk rows [a, b) run sparse; None: the whole chunk runs dense."""
    rows = [i for i in range(n) if start + i >= threshold
            and not (tail > 0 and prompt_len > 0 and start + i >= prompt_len - tail)]
    if n < 2 or len(rows) < 2:
        return None
    assert rows == list(range(rows[0], rows[-1] + 1))
    return rows[0], rows[-1] + 1


def feed_prompt(backend, q, k, v, chunks, cache, slots, prompt_len: int = 0, device="cpu"):
    """Layer 0 of a prompt (q [T, H, D], k / v [T, Hkv, D] on the CPU) through `backend`, chunk by
    chunk -> yields (start, n, out [n, H, D] on the CPU, whether the chunk ran sparse rows)."""
    start = 0
    for n in chunks:
        m = start + n
        stats = getattr(backend.pattern, "stats", None)
        before = stats.sparse_chunks if stats else 0
        batch = AttentionBatch([SeqChunk(0, n, start, slots, prompt_len=prompt_len)],
                               torch.arange(start, m, device=device), cache)
        backend.prepare(batch, q.dtype)
        out = backend.forward(0, *(t[start:m].to(device) for t in (q, k, v)), batch).cpu()
        yield start, n, out, stats is not None and stats.sparse_chunks > before
        start = m
