"""The rows of a prefill chunk that should run vertical-slash, written out row by row from the
documented rule (independent of the backends' arithmetic): rows at positions >= threshold, not
among the prompt's last `tail` tokens, in a chunk of more than one row, when at least two such
rows exist; every other row attends densely."""
from __future__ import annotations


def expected_sparse_rows(start: int, n: int, threshold: int, prompt_len: int = 0,
                         tail: int = 0) -> tuple[int, int] | None:
    """(a, b): chunk rows [a, b) run sparse; None: the whole chunk runs dense."""
    rows = [i for i in range(n) if start + i >= threshold
            and not (tail > 0 and prompt_len > 0 and start + i >= prompt_len - tail)]
    if n < 2 or len(rows) < 2:
        return None
    assert rows == list(range(rows[0], rows[-1] + 1))
    return rows[0], rows[-1] + 1
