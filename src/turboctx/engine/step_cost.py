"""What a step costs, so a long prefill beside running decodes can be sized to a latency target.

A step's time is modelled as
    seconds ~ fixed + per_token * tokens + per_pair * pairs + per_key * keys + per_pass * passes
where `tokens` are rows through the linear layers, `pairs` the query-key pairs attention visits
and `keys` the cached keys a prefill chunk's attention reads as a whole (sparse pattern
estimation, key ranges: work that grows with the context, not with the rows), each scaled by the
share of the model's layers the step runs, and `passes` the forwards through the layers (a
layered chunk's units count their share): each reads every weight it runs once, which is most
of a decode's time (memory-bound) and little of a long chunk's. The five rates are fitted to the steps this engine has
run (non-negative least squares of the relative error over recent steps of every size), so they
are this backend's rates on this device, not constants; before a kind of step has been seen the
scheduler grows its size geometrically, so a wrong guess costs one step, not a stall.
"""
from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

import numpy as np

SAMPLES_PER_BUCKET = 8     # recent steps kept per (tokens, pairs) size class


@dataclass
class StepWork:
    tokens: float = 0.0    # rows through the linear layers (x share of layers run)
    pairs: float = 0.0     # query-key pairs attended (x share of layers run)
    keys: float = 0.0      # keys read by prefill chunks' attention as a whole (x share of layers)
    passes: float = 0.0    # forwards through the layers (a layered chunk: its share of units)

    def __add__(self, other: "StepWork") -> "StepWork":
        return StepWork(self.tokens + other.tokens, self.pairs + other.pairs,
                        self.keys + other.keys, self.passes + other.passes)

    @property
    def features(self) -> tuple[float, float, float, float, float]:
        return (1.0, self.tokens, self.pairs, self.keys, self.passes)


class StepCostModel:
    def __init__(self):
        self._buckets: dict[tuple[int, int], deque] = {}
        self._coef: np.ndarray | None = None      # (fixed s, s per token, pair, key, pass)
        self._dirty = False
        self.max_tokens_seen = 0.0
        self.max_pairs_seen = 0.0

    def observe(self, work: StepWork, seconds: float) -> None:
        """One step's work and its measured wall time."""
        key = (int(work.tokens).bit_length(), int(work.pairs).bit_length() // 2)
        self._buckets.setdefault(key, deque(maxlen=SAMPLES_PER_BUCKET)).append(
            (*work.features, seconds))
        self.max_tokens_seen = max(self.max_tokens_seen, work.tokens)
        self.max_pairs_seen = max(self.max_pairs_seen, work.pairs)
        self._dirty = True

    def predict(self, work: StepWork) -> float | None:
        """Seconds the step should take; None before any step was measured."""
        coef = self._fit()
        if coef is None:
            return None
        return float(np.dot(coef, work.features))

    def trusted(self, work: StepWork, growth: float = 4.0) -> bool:
        """Whether `work` is within `growth` times the largest step measured (beyond that the
        fitted rates are an extrapolation the scheduler approaches step by step)."""
        return (work.tokens <= growth * max(self.max_tokens_seen, 16.0) and
                work.pairs <= growth * max(self.max_pairs_seen, 16.0 * 1024))

    def _fit(self) -> np.ndarray | None:
        if not self._dirty:
            return self._coef
        rows = np.array([s for b in self._buckets.values() for s in b], dtype=np.float64)
        self._dirty = False
        if len(rows) == 0:
            return None
        n = len(StepWork().features)
        x, y = rows[:, :n], rows[:, n]
        weight = 1 / np.maximum(y, 1e-6)          # relative errors: short steps count as much
        x_w, y_w = x * weight[:, None], y * weight
        scale = np.maximum(np.abs(x_w).max(axis=0), 1e-12)    # columns of similar size
        best, best_err = None, np.inf
        # non-negative least squares over five unknowns: the best non-negative solution on any
        # subset of the columns (the constant is always in)
        for extra in itertools.chain.from_iterable(
                itertools.combinations(range(1, n), k) for k in range(n - 1, -1, -1)):
            cols = [0, *extra]
            sol, *_ = np.linalg.lstsq(x_w[:, cols] / scale[cols], y_w, rcond=None)
            if (sol < 0).any():
                continue
            coef = np.zeros(n)
            coef[cols] = sol / scale[cols]
            err = float(((x_w @ coef - y_w) ** 2).sum())
            if err < best_err:
                best, best_err = coef, err
        self._coef = best if best is not None else np.array([float(y.min())] + [0.0] * (n - 1))
        return self._coef


def largest_fitting(lo: int, hi: int, fits) -> int:
    """The largest n in [lo, hi] with fits(n) (fits is monotone: true, then false); lo if none."""
    if hi <= lo or not fits(lo):
        return lo
    if fits(hi):
        return hi
    good, bad = lo, hi
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good

