"""Prefill benchmark: time to first token per prompt length."""
from __future__ import annotations

import statistics

import torch

from turboctx.bench.flops import prefill_flops


def random_prompt(vocab: int, n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, vocab - 100, (n,), generator=g).tolist()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def bench_prefill(make_llm, lengths: list[int], repeat: int, seed: int, ceilings: dict) -> list[dict]:
    """make_llm(n) -> an LLM whose KV cache holds n tokens (so peak memory is that of length n)."""
    import gc

    from turboctx import SamplingParams
    sp = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    rows = []
    for n in lengths:
        llm = make_llm(n)
        eng = llm.engine
        m, dev = eng.model_config, eng.device
        llm.generate(random_prompt(m.vocab_size, min(n, 4096), seed), sp, use_tqdm=False)  # warm-up
        ids = random_prompt(m.vocab_size, n, seed + n)
        times, peaks = [], []
        for _ in range(repeat):
            reset_peak(dev)
            out = llm.generate(ids, sp, use_tqdm=False)[0]
            times.append(out.metrics.ttft_s)
            peaks.append(out.metrics.peak_memory_bytes)
        ttft = statistics.median(times)
        lin, att = prefill_flops(m, n)
        floor = lin / (ceilings["matmul_tflops"] * 1e12) + att / (ceilings["attention_tflops"] * 1e12)
        rows.append({
            "engine": "turboctx", "length": n, "repeat": repeat, "ttft_s": ttft,
            "ttft_min_s": min(times), "ttft_max_s": max(times),
            "tokens_per_s": n / ttft, "tflops": (lin + att) / ttft / 1e12,
            "fraction_of_matmul_ceiling": (lin + att) / ttft / 1e12 / ceilings["matmul_tflops"],
            "floor_s": floor, "over_floor": ttft / floor,
            "peak_memory_gib": max(peaks) / 2 ** 30 if peaks[0] else None,
        })
        del llm, eng
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return rows
