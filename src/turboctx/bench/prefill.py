"""Prefill benchmark: time to first token per prompt length."""
from __future__ import annotations

import statistics

import torch

from turboctx.bench.flops import prefill_flops


def random_prompt(vocab: int, n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, vocab - 100, (n,), generator=g).tolist()


def sparse_columns(stats: list[dict], ttft: float) -> dict:
    """Median estimation / sparse-attention seconds over the runs, the density, their share of TTFT."""
    if not stats:
        return {}
    est = statistics.median(s["estimate_s"] for s in stats)
    return {"engine": "turboctx+sparse", "density": stats[-1]["density"], "estimate_s": est,
            "estimate_fraction": est / ttft,
            "sparse_attend_s": statistics.median(s["attend_s"] for s in stats),
            "sparse_chunk_layers": stats[-1]["sparse_chunk_layers"],
            "dense_chunk_layers": stats[-1]["dense_chunk_layers"],
            "dense_tail_row_layers": stats[-1]["dense_tail_row_layers"]}


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def warmup_length(llm, n: int) -> int:
    """A prompt that runs every path the timed one does: two sparse chunks when sparse is on
    (the first compiles the Triton kernels, the second sees a new key length), then the prompt's
    dense tail."""
    cfg = llm.config
    if cfg.sparse is None:
        return min(n, 4096)
    return min(n, max(4096, cfg.sparse.threshold + cfg.max_num_batched_tokens + cfg.sparse.dense_tail))


def bench_prefill(make_llm, lengths: list[int], repeat: int, seed: int, ceilings: dict,
                  profile_dir=None) -> list[dict]:
    """make_llm(n) -> an LLM whose KV cache holds n tokens (so peak memory is that of length n).
    With sparse attention, also the achieved density and the time spent estimating patterns
    and in the sparse attention (CUDA events, read after each run).
    With tensor parallelism the ceilings (measured on one device) count once per rank, peak
    memory is reported per rank (`peak_memory_gib_per_rank`; `peak_memory_gib` is the largest),
    and the sparse figures are rank 0's (its heads). profile_dir: one more run per length under
    torch.profiler (bench/profile.py)."""
    import gc

    from turboctx import SamplingParams
    sp = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    rows = []
    for n in lengths:
        llm = make_llm(n)
        eng = llm.engine
        m, dev, tp = eng.architecture, eng.device, llm.config.parallel.tensor_parallel_size
        sparse = llm.config.sparse is not None
        llm.generate(random_prompt(m.vocab_size, warmup_length(llm, n), seed), sp, use_tqdm=False)
        ids = random_prompt(m.vocab_size, n, seed + n)
        times, peaks, stats = [], [], []
        for _ in range(repeat):
            eng.collective_rpc("reset_peak_memory")
            if sparse:
                eng.reset_sparse_stats(timing=True)
            out = llm.generate(ids, sp, use_tqdm=False)[0]
            times.append(out.metrics.ttft_s)
            peaks.append(eng.collective_rpc("peak_memory"))          # bytes, by rank
            if sparse:
                stats.append(eng.sparse_stats())
        ttft = statistics.median(times)
        lin, att = prefill_flops(m, n)
        floor = (lin / (ceilings["matmul_tflops"] * 1e12) + att / (ceilings["attention_tflops"] * 1e12)) / tp
        per_rank = [max(p[r] for p in peaks) / 2 ** 30 for r in range(tp)]
        sparse_cols = sparse_columns(stats, ttft)
        engine = sparse_cols.pop("engine", "turboctx") + (f" tp={tp}" if tp > 1 else "")
        rows.append({
            "engine": engine, "length": n, "repeat": repeat,
            "tensor_parallel_size": tp, "ttft_s": ttft,
            "ttft_min_s": min(times), "ttft_max_s": max(times),
            "tokens_per_s": n / ttft, "tflops": (lin + att) / ttft / 1e12,
            "fraction_of_matmul_ceiling": (lin + att) / ttft / 1e12 / (tp * ceilings["matmul_tflops"]),
            "floor_s": floor, "over_floor": ttft / floor,
            "peak_memory_gib": max(per_rank) if per_rank[0] else None,
            "peak_memory_gib_per_rank": per_rank if tp > 1 else None,
            **sparse_cols,
        })
        if profile_dir is not None:
            from turboctx.bench.profile import profile_request
            rows[-1]["profile"] = str(profile_request(llm, ids, sp, profile_dir,
                                                      f"profile_{llm.config.attention_name}_{n}"))
        llm.shutdown()
        del llm, eng
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return rows
