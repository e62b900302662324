"""Perplexity by position: mean NLL per position bin (0-2K, 2-8K, 8-16K, 16-32K, ... doubling)
over windows of a long text; the standard long-context extrapolation check. Several engine
settings run side by side on the same token windows.
"""
from __future__ import annotations

import math

from turboctx.eval import haystack as hs


def bin_edges(length: int) -> list[int]:
    edges = [0, 2048, 8192]
    while edges[-1] < length:
        edges.append(edges[-1] * 2)
    edges = [e for e in edges if e < length] + [length]
    return edges


def bin_label(lo: int, hi: int) -> str:
    k = lambda n: f"{n // 1024}K" if n and n % 1024 == 0 else str(n)
    return f"{k(lo)}-{k(hi)}"


def windows(encode, length: int, n: int, text_path: str | None = None) -> list[list[int]]:
    """n windows of `length` tokens, spread over the text (wrapping round it if short)."""
    text = hs.load_ppl_text(text_path)
    chars = min(len(text), int(length * 6 * max(1, n)))
    while True:
        ids = list(encode(text[:chars]))
        if len(ids) >= length * n or chars >= len(text):
            break
        chars = min(len(text), chars * 2)
    if len(ids) < length:
        ids = ids * (length // max(1, len(ids)) + 1)
    stride = max(1, (len(ids) - length) // max(1, n - 1)) if n > 1 else 0
    return [ids[i * stride:i * stride + length] for i in range(n)]


def nll_by_bin(logprobs_list: list[list[float]], length: int) -> dict[str, float | None]:
    """logprobs_list: per window, log p of tokens 1..length-1 (position j = index j + 1)."""
    edges = bin_edges(length)
    out = {}
    for lo, hi in zip(edges, edges[1:]):
        vals = [-lp for lps in logprobs_list for j, lp in enumerate(lps, start=1)
                if lo <= j < hi and not math.isnan(lp)]
        out[bin_label(lo, hi)] = round(sum(vals) / len(vals), 4) if vals else None
    return out


def run_ppl(targets: dict[str, object], encode, length: int, n_windows: int = 1,
            text_path: str | None = None, progress: bool = True) -> dict[str, dict]:
    """{setting: {bin: mean NLL}} for each named target."""
    wins = windows(encode, length, n_windows, text_path)
    results = {}
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(targets) * len(wins), unit="window", desc="ppl")
    for name, target in targets.items():
        lps = []
        for w in wins:
            lps.append(target.token_logprobs(w))
            if bar is not None:
                bar.update(1)
        results[name] = nll_by_bin(lps, length)
        if hasattr(target, "close"):   # one engine at a time: each may take most of the GPU
            target.close()
    if bar is not None:
        bar.close()
    return results
