"""Decode benchmark at long context: ms per token and the bandwidth it implies.

The context is synthetic by default: the KV cache is filled with random values (never zeros) and
the request starts as if its prompt were already computed, so decode at 1M tokens is measured
without a minutes-long prefill. Decode cost depends only on the cache's size, not its values.
"""
from __future__ import annotations

import statistics

from turboctx.bench.flops import decode_bytes
from turboctx.bench.prefill import random_prompt


def bench_decode(llm, lengths: list[int], steps: int, repeat: int, seed: int, ceilings: dict) -> list[dict]:
    from turboctx import SamplingParams
    eng = llm.engine
    m, dev = eng.architecture, eng.device
    eng.collective_rpc("fill_kv_cache_random", seed)   # every rank's cache
    rows = []
    for n in lengths:
        ids = random_prompt(m.vocab_size, n, seed + n)
        per_token = []
        for r in range(repeat + 1):                       # the first run warms up
            eng.collective_rpc("reset_peak_memory")
            req = eng.make_request(ids, SamplingParams(max_tokens=steps + 1, temperature=0, ignore_eos=True))
            eng.add_request(req, precomputed_tokens=n - 1)   # synthetic context: the cache holds it
            out = None
            while eng.has_unfinished():
                for o in eng.step():
                    out = o
            if r:
                per_token.append(1.0 / out.metrics.decode_tokens_per_s)
        t = statistics.median(per_token)
        tp = eng.config.parallel.tensor_parallel_size
        read = decode_bytes(m, n, eng.config.dtype, eng.config.kv_cache_dtype)
        peaks = [b / 2 ** 30 for b in eng.collective_rpc("peak_memory")] if dev.type == "cuda" else None
        rows.append({"engine": "turboctx" if tp == 1 else f"turboctx tp={tp}", "context": n, "steps": steps,
                     "repeat": repeat,
                     "ms_per_token": t * 1e3, "ms_min": min(per_token) * 1e3, "ms_max": max(per_token) * 1e3,
                     "kv_cache_dtype": eng.config.cache.kv_cache_dtype,
                     "gb_per_s": read / t / 1e9,
                     # each rank reads its share of the weights and KV
                     "floor_ms": read / (tp * ceilings["copy_gbps"] * 1e9) * 1e3,
                     "peak_memory_gib": max(peaks) if peaks else None,
                     "peak_memory_gib_per_rank": peaks if tp > 1 else None})
    return rows
