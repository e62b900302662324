"""Decode benchmark at long context: ms per token and the bandwidth it implies.

The context is synthetic by default: the KV cache is filled with random values (never zeros) and
the request starts as if its prompt were already computed, so decode at 1M tokens is measured
without a minutes-long prefill. Decode cost depends only on the cache's size, not its values.
"""
from __future__ import annotations

import statistics

import torch

from turboctx.bench.flops import decode_bytes
from turboctx.bench.prefill import random_prompt, reset_peak


def bench_decode(llm, lengths: list[int], steps: int, repeat: int, seed: int, ceilings: dict) -> list[dict]:
    from turboctx import SamplingParams
    eng = llm.engine
    m, dev = eng.model_config, eng.device
    g = torch.Generator(device=dev).manual_seed(seed)
    for t in (eng.kv_cache.k, eng.kv_cache.v):
        t.normal_(0, 1, generator=g)
    rows = []
    for n in lengths:
        ids = random_prompt(m.vocab_size, n, seed + n)
        per_token = []
        for r in range(repeat + 1):                       # the first run warms up
            reset_peak(dev)
            req = eng.make_request(ids, SamplingParams(max_tokens=steps + 1, temperature=0, ignore_eos=True))
            req.num_computed_tokens = n - 1               # synthetic context: the cache holds it
            eng.add_request(req)
            out = None
            while eng.has_unfinished():
                for o in eng.step():
                    out = o
            if r:
                per_token.append(1.0 / out.metrics.decode_tokens_per_s)
        t = statistics.median(per_token)
        rows.append({"engine": "turboctx", "context": n, "steps": steps, "repeat": repeat,
                     "ms_per_token": t * 1e3, "ms_min": min(per_token) * 1e3, "ms_max": max(per_token) * 1e3,
                     "gb_per_s": decode_bytes(m, n, eng.config.dtype) / t / 1e9,
                     "floor_ms": decode_bytes(m, n, eng.config.dtype) / (ceilings["copy_gbps"] * 1e9) * 1e3, "peak_memory_gib": (torch.cuda.max_memory_allocated(dev) / 2 ** 30
                                                           if dev.type == "cuda" else None)})
    return rows
