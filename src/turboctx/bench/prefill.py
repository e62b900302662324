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
    """make_llm(n) -> an LLM whose KV cache holds n tokens (so peak memory is that of length n).

    With tensor parallelism the ceilings (measured on one device) count once per rank, and peak
    memory is reported per rank (`peak_memory_gib_per_rank`; `peak_memory_gib` is the largest)."""
    import gc

    from turboctx import SamplingParams
    sp = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    rows = []
    for n in lengths:
        llm = make_llm(n)
        eng = llm.engine
        m, dev, tp = eng.model_config, eng.device, eng.config.tensor_parallel_size
        llm.generate(random_prompt(m.vocab_size, min(n, 4096), seed), sp, use_tqdm=False)  # warm-up
        ids = random_prompt(m.vocab_size, n, seed + n)
        times, peaks = [], []
        for _ in range(repeat):
            eng.collective_rpc("reset_peak_memory")
            out = llm.generate(ids, sp, use_tqdm=False)[0]
            times.append(out.metrics.ttft_s)
            peaks.append(eng.collective_rpc("peak_memory"))          # bytes, by rank
        ttft = statistics.median(times)
        lin, att = prefill_flops(m, n)
        floor = (lin / (ceilings["matmul_tflops"] * 1e12) + att / (ceilings["attention_tflops"] * 1e12)) / tp
        per_rank = [max(p[r] for p in peaks) / 2 ** 30 for r in range(tp)]
        rows.append({
            "engine": "turboctx" if tp == 1 else f"turboctx tp={tp}", "length": n, "repeat": repeat,
            "tensor_parallel_size": tp, "ttft_s": ttft,
            "ttft_min_s": min(times), "ttft_max_s": max(times),
            "tokens_per_s": n / ttft, "tflops": (lin + att) / ttft / 1e12,
            "fraction_of_matmul_ceiling": (lin + att) / ttft / 1e12 / (tp * ceilings["matmul_tflops"]),
            "floor_s": floor, "over_floor": ttft / floor,
            "peak_memory_gib": max(per_rank) if per_rank[0] else None,
            "peak_memory_gib_per_rank": per_rank if tp > 1 else None,
        })
        llm.shutdown()
        del llm, eng
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return rows
