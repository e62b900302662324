"""What sparse prefill did: (chunk, layer) counts, the achieved density, time spent estimating
patterns and attending; and the recall observer calibration listens with.

Device counters and CUDA events are summed lazily (`flush`), after the timed work: no sync per
layer. Timing on the GPU is off unless asked (`timing=True`: benchmarks); on the CPU the wall
clock is read always.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from turboctx.attention.sparse.blocks import causal_entries, count_attended
from turboctx.attention.sparse.pattern import VSPattern


@dataclass
class SparseStats:
    sparse_chunks: int = 0         # (chunk, layer) pairs that ran sparse
    dense_chunks: int = 0          # prefill (chunk, layer) pairs that ran dense (below threshold)
    dense_tail_rows: int = 0       # query rows x layers of the prompts' dense tails (dense_tail)
    kept: float = 0.0              # attended entries summed over heads (where counted)
    total: float = 0.0             # causal entries summed over heads (same chunks)
    chunks: dict[int, list] = field(default_factory=dict, repr=False)  # chunk start -> [kept, total]
    _pending: list = field(default_factory=list, repr=False)   # (start, pattern, n, observer call)
    _seconds: dict = field(default_factory=lambda: {"estimate": 0.0, "attend": 0.0}, repr=False)
    _events: list = field(default_factory=list, repr=False)    # (what, start, end) CUDA events

    @property
    def density(self) -> float:
        """attended / causal entries over the counted sparse chunks (nan when none)."""
        self.flush()
        return self.kept / self.total if self.total else float("nan")

    @property
    def estimate_s(self) -> float:
        """Time spent estimating patterns (scores, top-k)."""
        self.flush()
        return self._seconds["estimate"]

    @property
    def attend_s(self) -> float:
        """Time spent in the sparse attention itself."""
        self.flush()
        return self._seconds["attend"]

    def density_by_chunk(self) -> dict[int, float]:
        """Chunk start position -> density of that chunk over all layers and heads."""
        self.flush()
        return {s: kt[0] / kt[1] for s, kt in sorted(self.chunks.items())}

    def count(self, pattern: VSPattern, n: int, start: int, on_kept=None) -> None:
        """Counts a sparse chunk's entries (lazily); on_kept([H] kept, total) once counted."""
        self._pending.append((start, pattern, n, on_kept))
        total = pattern.num_heads * causal_entries(n, start)
        self.total += total
        self.chunks.setdefault(start, [0.0, 0.0])[1] += total

    def flush(self) -> None:
        if self._pending:
            kept = [count_attended(pat, n, start) for start, pat, n, _ in self._pending]   # [H] each
            sums = torch.stack([k.sum() for k in kept]).tolist()
            for (start, _, n, on_kept), k, v in zip(self._pending, kept, sums):
                self.kept += v
                self.chunks[start][0] += v
                if on_kept is not None:
                    on_kept(k.cpu(), causal_entries(n, start))
            self._pending.clear()
        if self._events:
            self._events[-1][2].synchronize()
            for what, a, b in self._events:
                self._seconds[what] += a.elapsed_time(b) / 1e3
            self._events.clear()

    def as_dict(self) -> dict:
        return {"sparse_chunk_layers": self.sparse_chunks, "dense_chunk_layers": self.dense_chunks,
                "dense_tail_row_layers": self.dense_tail_rows,
                "density": self.density, "estimate_s": self.estimate_s, "attend_s": self.attend_s}


class Clock:
    """Marks intervals: CUDA events when timing on the GPU, the wall clock on the CPU."""

    def __init__(self, stats: SparseStats, device: torch.device, enabled: bool):
        self.stats, self.cuda = stats, device.type == "cuda"
        self.enabled = enabled or not self.cuda

    def mark(self):
        if not self.enabled:
            return None
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def add(self, what: str, a, b) -> None:
        if a is None:
            return
        if self.cuda:
            self.stats._events.append((what, a, b))
        else:
            self.stats._seconds[what] += b - a


@dataclass
class RecallObserver:
    """Per layer, each sparse chunk's attention recall exp(lse_sparse - lse_dense) of its last
    queries averaged per head ([H]), and its attended entries per head with the causal total:
    what calibration needs (calibration/rounds.py)."""
    recall: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    kept: dict[int, list[tuple[torch.Tensor, int]]] = field(default_factory=dict)

    def on_recall(self, layer: int, lse_sparse: torch.Tensor, lse_dense: torch.Tensor) -> None:
        self.recall.setdefault(layer, []).append(torch.exp(lse_sparse - lse_dense).mean(0))

    def on_kept(self, layer: int, kept: torch.Tensor, total: int) -> None:
        self.kept.setdefault(layer, []).append((kept, total))
