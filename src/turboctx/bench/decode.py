"""Decode benchmark at long context: ms per token and the bandwidth it implies.

The context is synthetic by default: the KV cache is filled with random values (never zeros) and
the request starts as if its prompt were already computed, so decode at 1M tokens is measured
without a minutes-long prefill. Decode cost depends only on the cache's size, not its values.
"""
from __future__ import annotations

import statistics

from turboctx.bench.flops import decode_bytes
from turboctx.bench.prefill import random_prompt


def bench_decode(llm, lengths: list[int], steps: int, repeat: int, seed: int, ceilings: dict,
                 batch: int = 1) -> list[dict]:
    """ms per decode step with `batch` requests, each at every context length in turn."""
    from turboctx import SamplingParams
    eng = llm.engine
    m, dev = eng.architecture, eng.device
    eng.collective_rpc("fill_kv_cache_random", seed)   # every rank's cache
    rows = []
    for n in lengths:
        prompts = [random_prompt(m.vocab_size, n, seed + n + i) for i in range(batch)]
        per_step = []
        for r in range(repeat + 1):                       # the first run warms up
            eng.collective_rpc("reset_peak_memory")
            for ids in prompts:
                req = eng.make_request(ids, SamplingParams(max_tokens=steps + 1, temperature=0, ignore_eos=True))
                eng.add_request(req, precomputed_tokens=n - 1)   # synthetic context: the cache holds it
            outs = {}
            while eng.has_unfinished():
                for o in eng.step():
                    outs[o.request_id] = o
            if r:   # the requests decode side by side: a step's time is each one's time per token
                per_step.append(statistics.median(1.0 / o.metrics.decode_tokens_per_s for o in outs.values()))
        t = statistics.median(per_step)
        tp = eng.config.parallel.tensor_parallel_size
        kv_dtype = eng.config.kv_cache_dtype
        weights = decode_bytes(m, 0, eng.config.dtype, kv_dtype)
        read = weights + batch * (decode_bytes(m, n, eng.config.dtype, kv_dtype) - weights)
        floor = read / (tp * ceilings["copy_gbps"] * 1e9)  # each rank reads its share of the weights and KV
        peaks = [b / 2 ** 30 for b in eng.collective_rpc("peak_memory")] if dev.type == "cuda" else None
        rows.append({"engine": "turboctx" if tp == 1 else f"turboctx tp={tp}", "context": n, "steps": steps,
                     "repeat": repeat, "batch": batch,
                     "ms_per_token": t * 1e3, "ms_min": min(per_step) * 1e3, "ms_max": max(per_step) * 1e3,
                     "tokens_per_s": batch / t, "floor_tokens_per_s": batch / floor,
                     "kv_cache_dtype": eng.config.cache.kv_cache_dtype,
                     "gb_per_s": read / t / 1e9,
                     "floor_ms": floor * 1e3,
                     "peak_memory_gib": max(peaks) if peaks else None,
                     "peak_memory_gib_per_rank": peaks if tp > 1 else None})
    return rows
