"""Shared pieces: the Sample record, size parsing, length fitting by binary search."""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Callable

from turboctx.config.options import parse_size


def parse_sizes(text: str) -> list[int]:
    """'4k,16k' -> [4096, 16384] (k = 1024, as in RULER's 4K/128K)."""
    return [parse_size(t) for t in str(text).split(",") if t.strip()]


def parse_floats(text: str) -> list[float]:
    """'0,0.25,0.5' or '0,25,50,100' (percent when any value > 1) -> fractions in [0, 1]."""
    vals = [float(t) for t in str(text).split(",") if t.strip()]
    if any(v > 1 for v in vals):
        vals = [v / 100 for v in vals]
    return vals


def parse_depths(text: str, seed: int) -> list[float]:
    """Needle depths as fractions in [0, 1]:
    - '0,0.25,0.5' or '0,25,50,100' (percent when any value > 1);
    - 'grid:N': N evenly spaced from 0 to 1;
    - 'random:N': N drawn uniformly from the seed (4 decimals), so that each seed puts its needles
      at new positions. Prompts at one depth share haystack and needle position and differ only
      in the key; `turboctx eval paired` counts them as one cluster, so a paired comparison
      gains precision from more positions, not from more trials at the same ones."""
    text = str(text).strip()
    kind, _, count = text.partition(":")
    if kind in ("grid", "random"):
        if not count.strip().isdigit() or int(count) < 1:
            raise ValueError(f"depths {text!r}: use {kind}:N with N a whole number >= 1")
        n = int(count)
        if kind == "grid":
            return [round(i / (n - 1), 6) for i in range(n)] if n > 1 else [0.5]
        rng = random.Random(f"depths/{seed}")
        return sorted({round(rng.random(), 4) for _ in range(n)})
    try:
        vals = parse_floats(text)
    except ValueError:
        raise ValueError(f"depths {text!r}: give comma-separated fractions (0,0.5,1), percents "
                         "(0,50,100), grid:N or random:N") from None
    if not vals or any(v < 0 or v > 1 for v in vals):
        raise ValueError(f"depths {text!r}: each depth must lie in 0..1 (or 0..100 as percent)")
    return vals


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class Sample:
    """One prompt to send and how to score its answer."""

    task: str
    length: int                      # target length in tokens (prompt + tokens to generate)
    index: int                       # trial / sample number within (task, length, depth)
    prompt: str
    expected: list[str]
    metric: str = "all"              # "all" (string_match_all) | "part" (string_match_part)
    max_tokens: int = 32
    depth: float | None = None       # fraction in [0, 1], None when not a depth task
    prompt_tokens: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        d = "" if self.depth is None else f"{self.depth:.4f}"
        return f"{self.task}|{self.length}|{d}|{self.index}"


def fit_to_length(build: Callable[[int], str], count: Callable[[str], int], budget: int,
                  lo: int = 1, hi: int | None = None,
                  max_units: int | None = None) -> tuple[int, str, int]:
    """Largest n with count(build(n)) <= budget, by binary search (RULER's procedure).

    Returns (n, text, tokens). Without `hi`, an upper bound is found by doubling from `lo`.
    `max_units` caps n (a generator with a finite supply, e.g. cwe's word list): the result is
    then at most max_units, and equals it when even that many units fit.
    Raises ValueError when even `lo` units do not fit.
    """
    first = build(lo)
    n_first = count(first)
    if n_first > budget:
        raise ValueError(f"the shortest prompt ({lo} units) is {n_first} tokens, over the "
                         f"budget of {budget}: ask for a longer length")
    best: tuple[int, str, int] = (lo, first, n_first)
    if hi is None:
        hi = max(2 * lo, 16)
        while True:
            if max_units is not None and hi >= max_units:
                hi = max_units
                text = build(hi)
                n_tok = count(text)
                if n_tok <= budget:
                    return hi, text, n_tok
                break
            if count(build(hi)) > budget:
                break
            lo, hi = hi, hi * 2
    elif max_units is not None:
        hi = min(hi, max_units)
    lo = best[0] + 1 if lo == best[0] else lo
    while lo <= hi:
        mid = (lo + hi) // 2
        text = build(mid)
        n_tok = count(text)
        if n_tok <= budget:
            if mid >= best[0]:
                best = (mid, text, n_tok)
            lo = mid + 1
        else:
            hi = mid - 1
    return best
