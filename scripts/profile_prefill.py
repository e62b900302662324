"""Where one prefill (and a few decode steps) of a real model goes, op by op (torch.profiler).

Made for the paired retrieval runs of issue #5: the default model (135M) with DCA takes about
0.56 s to prefill 16K tokens sparse on the H200, far above what its FLOPs need, and eval
throughput may be bound by it. This prints the ops that take the time and how many kernels run.

    export PYTHONPATH=$PWD/src:$PWD/tests
    python3 scripts/profile_prefill.py --model $GGUF --dca --attention sparse --sparse-threshold 4096 \
        --length 16k --decode 16 --device cuda --dtype bfloat16 --out $OUT
    python3 scripts/profile_prefill.py --model random:smollm2-135m --length 2k --device cpu   # smoke run

Prints wall time per prefill (median of --repeat, after a warmup run), then the top --top ops by
device time (CPU time on the CPU) with call counts, and writes the profile table to
--out/profile_<attention>_<length>.txt and a Chrome trace beside it.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from turboctx import LLM, SamplingParams
from turboctx.bench.prefill import random_prompt
from turboctx.errors import TurboctxError
from turboctx.eval.common import parse_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="default: the default model")
    ap.add_argument("--length", default="16k")
    ap.add_argument("--decode", type=int, default=0, help="decode steps after the prefill")
    ap.add_argument("--attention", default="dense", choices=["dense", "sparse"])
    ap.add_argument("--sparse-threshold", type=int, default=None)
    ap.add_argument("--dca", action="store_true")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", type=Path, default=Path("/tmp/profile_prefill"))
    a = ap.parse_args()
    n = parse_size(a.length)
    opts = {"attention": a.attention, "dca": a.dca}
    if a.sparse_threshold is not None:
        opts["sparse_threshold"] = a.sparse_threshold
    try:
        llm = LLM(a.model, device=a.device, dtype=a.dtype, max_model_len=n + a.decode + 64, **opts)
    except TurboctxError as e:
        raise SystemExit(f"error: {e}")
    dev = llm.engine.device
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    sp = SamplingParams(max_tokens=1 + a.decode, temperature=0, ignore_eos=True)
    ids = random_prompt(llm.model_config.vocab_size, n, 0)
    llm.generate(ids, sp, use_tqdm=False)                       # warmup: compiles, caches
    walls, ttfts = [], []
    for _ in range(a.repeat):
        sync()
        t0 = time.perf_counter()
        out = llm.generate(ids, sp, use_tqdm=False)[0]
        sync()
        walls.append(time.perf_counter() - t0)
        ttfts.append(out.metrics.ttft_s)
    print(f"{a.model} {a.attention} dca={a.dca} n={n} decode={a.decode} on {dev}: "
          f"ttft {statistics.median(ttfts):.3f} s, whole request {statistics.median(walls):.3f} s "
          f"(median of {a.repeat})")
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        llm.generate(ids, sp, use_tqdm=False)
        sync()
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    averages = prof.key_averages()                              # aggregated once, read three ways
    text = averages.table(sort_by=key, row_limit=a.top)
    print(text)
    if dev.type == "cuda":
        kernels = sum(e.count for e in averages if e.device_type.name == "CUDA")
        print(f"device kernels in the profiled request: {kernels}")
        by_cpu = averages.table(sort_by="self_cpu_time_total", row_limit=a.top)
        print(by_cpu)
        text += "\n\n" + by_cpu
    a.out.mkdir(parents=True, exist_ok=True)
    stem = a.out / f"profile_{a.attention}{'_dca' if a.dca else ''}_{n}"
    stem.with_suffix(".txt").write_text(text)
    prof.export_chrome_trace(str(stem.with_suffix(".json")))
    print(f"table: {stem.with_suffix('.txt')}  trace: {stem.with_suffix('.json')}")
    llm.shutdown()


if __name__ == "__main__":
    main()
