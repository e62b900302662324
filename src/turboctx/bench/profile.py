"""Where one prefill goes, op by op (torch.profiler): the table by device time (CPU time on the
CPU) with call counts and kernel launches, and a Chrome trace (`turboctx bench prefill
--profile DIR`)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile


def profile_request(llm, ids: list[int], params, out: Path, name: str, top: int = 25) -> Path:
    """Runs one request under the profiler; writes out/<name>.txt and out/<name>.json (trace).
    Returns the table's path."""
    dev = llm.engine.device
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        llm.generate(ids, params, use_tqdm=False)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    averages = prof.key_averages()                      # aggregated once, read twice
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    text = averages.table(sort_by=key, row_limit=top)
    if dev.type == "cuda":
        kernels = sum(e.count for e in averages if e.device_type.name == "CUDA")
        text += (f"\n\ndevice kernels in the request: {kernels}\n\n"
                 + averages.table(sort_by="self_cpu_time_total", row_limit=top))
    out.mkdir(parents=True, exist_ok=True)
    table = out / f"{name}.txt"
    table.write_text(text)
    prof.export_chrome_trace(str(out / f"{name}.json"))
    return table
