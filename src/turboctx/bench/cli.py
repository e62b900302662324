"""`turboctx bench prefill|decode`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from turboctx.cli_options import (Attention, Dca, SparseConfigFile, SparseDenseTail, SparseThreshold,
                                  attention_flags, option_sizes)

bench_app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

PREFILL_COLUMNS = ["engine", "length", "ttft_s", "ttft_min_s", "ttft_max_s", "tokens_per_s", "tflops",
                   "fraction_of_matmul_ceiling", "over_floor", "peak_memory_gib", "usd_per_mtok"]
SPARSE_COLUMNS = ["density", "estimate_s", "estimate_fraction", "sparse_attend_s"]
DECODE_COLUMNS = ["engine", "context", "ms_per_token", "ms_min", "ms_max", "gb_per_s", "floor_ms",
                  "peak_memory_gib"]
PER_RANK_COLUMN = "peak_memory_gib_per_rank"     # shown when tensor parallelism is on
TensorParallel = Annotated[int, typer.Option("--tensor-parallel-size", min=1,
                                             help="split the model over this many GPUs (one process each)")]


def _setup(model, device, dtype, max_len, attention, prefill_chunk_size, extra, cuda_graphs=None,
           tensor_parallel_size: int = 1):
    from turboctx import LLM
    if cuda_graphs is not None:
        extra = {**extra, "cuda_graphs": cuda_graphs}
    # no prefix caching: repeated runs of one prompt must each compute it
    return LLM(model, device=device, dtype=dtype, max_model_len=max_len, kv_cache_tokens=max_len,
               prefill_chunk_size=prefill_chunk_size, max_num_seqs=1, attention=attention,
               enable_prefix_caching=False, tensor_parallel_size=tensor_parallel_size, **extra)


def _ceilings(llm) -> dict:
    eng = llm.engine
    return _measure_ceilings(eng.model_config, eng.device, eng.config.dtype)


def _measure_ceilings(m, device, dtype) -> dict:
    """Matmul, attention and copy ceilings of one device (a rank's, under tensor parallelism)."""
    from turboctx.bench.flops import attention_tflops, copy_gbps, matmul_tflops
    att, n = attention_tflops(m, device, dtype)
    return {"matmul_tflops": matmul_tflops(device, dtype), "attention_tflops": att,
            "attention_probe_tokens": n, "copy_gbps": copy_gbps(device)}


def _columns(columns: list[str], rows: list[dict]) -> list[str]:
    return columns + ([PER_RANK_COLUMN] if any(r.get(PER_RANK_COLUMN) for r in rows) else [])


@bench_app.command()
def prefill(model: Annotated[str, typer.Option("--model", "-m")] = "random:qwen2.5-7b",
            lengths: Annotated[str, typer.Option(help="prompt lengths, e.g. 32k,128k,1m")] = "32k,128k",
            repeat: Annotated[int, typer.Option(min=1)] = 3,
            device: Optional[str] = None, dtype: Optional[str] = None,
            attention: Attention = "dense", sparse_threshold: SparseThreshold = None,
            sparse_config: SparseConfigFile = None, sparse_dense_tail: SparseDenseTail = None,
            dca: Dca = None, prefill_chunk_size: Optional[int] = None,
            compare: Annotated[Optional[str], typer.Option(help="'hf': HF transformers in the same run")] = None,
            price_per_gpu_hour: Annotated[Optional[float], typer.Option(help="USD; adds cost per 1M prompt tokens")] = None,
            json_path: Annotated[Optional[Path], typer.Option("--json")] = None,
            plot: Annotated[Optional[Path], typer.Option(help="PNG: TTFT vs length")] = None,
            tensor_parallel_size: TensorParallel = 1,
            seed: int = 0):
    """Time to first token per prompt length, against the ceilings measured in the same run."""
    import torch

    from turboctx.bench.prefill import bench_prefill
    from turboctx.bench.report import environment, plot_ttft, print_table, write_json
    from turboctx.config import parse_dtype
    from turboctx.engine.llm_engine import resolve_device
    from turboctx.weights import open_checkpoint
    ns = option_sizes(lengths)
    if compare not in (None, "hf"):
        raise typer.BadParameter(f"--compare {compare!r}: only 'hf' is supported")
    extra = attention_flags(dca, sparse_threshold, sparse_config, sparse_dense_tail)

    def make_llm(n):
        return _setup(model, device, dtype, n + 16, attention, prefill_chunk_size, extra,
                      tensor_parallel_size=tensor_parallel_size)

    # the ceilings need only the model's shape: no engine (under TP, no worker processes) for them
    dev = resolve_device(device)
    m = open_checkpoint(model).config
    torch_dtype = parse_dtype(dtype) or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    ceilings = _measure_ceilings(m, dev, torch_dtype)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    rows = bench_prefill(make_llm, ns, repeat, seed, ceilings)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    if compare == "hf":
        from turboctx.bench.hf_compare import hf_prefill
        rows += hf_prefill(m, ns, repeat, seed, dev, torch_dtype)
    if price_per_gpu_hour is not None:
        for r in rows:
            if r.get("ttft_s"):
                r["usd_per_mtok"] = price_per_gpu_hour / 3600 * r["ttft_s"] / r["length"] * 1e6
    env = environment(dev)
    gpus = f"{tensor_parallel_size} x " if tensor_parallel_size > 1 else ""
    print_table(f"prefill: {model} ({str(torch_dtype).replace('torch.', '')}, {attention}) on "
                f"{gpus}{env.get('gpu', env['device'])} - matmul {ceilings['matmul_tflops']:.0f} TFLOP/s, "
                f"attention {ceilings['attention_tflops']:.0f} TFLOP/s (per device)", rows,
                _columns(PREFILL_COLUMNS + (SPARSE_COLUMNS if any("density" in r for r in rows) else []), rows))
    if json_path:
        write_json(json_path, {"kind": "prefill", "model": model, "attention": attention,
                               "tensor_parallel_size": tensor_parallel_size,
                               "env": env, "ceilings": ceilings, "rows": rows})
    if plot:
        plot_ttft(plot, rows, f"TTFT, {model}, {env.get('gpu', env['device'])}")


@bench_app.command()
def decode(model: Annotated[str, typer.Option("--model", "-m")] = "random:qwen2.5-7b",
           lengths: Annotated[str, typer.Option(help="context lengths, e.g. 128k,1m")] = "32k,128k",
           steps: Annotated[int, typer.Option(min=2, help="tokens decoded per run")] = 64,
           repeat: Annotated[int, typer.Option(min=1)] = 3,
           device: Optional[str] = None, dtype: Optional[str] = None,
           dca: Dca = None,
           compare: Annotated[Optional[str], typer.Option(help="'hf': HF transformers in the same run")] = None,
           cuda_graphs: Annotated[Optional[bool], typer.Option(
               "--cuda-graphs/--no-cuda-graphs",
               help="replay decode steps as CUDA graphs (default: wherever they run)")] = None,
           json_path: Annotated[Optional[Path], typer.Option("--json")] = None,
           tensor_parallel_size: TensorParallel = 1,
           seed: int = 0):
    """Decode ms/token at long context (synthetic random-valued cache: no prefill needed)."""
    from turboctx.bench.decode import bench_decode
    from turboctx.bench.report import environment, print_table, write_json
    ns = option_sizes(lengths)
    llm = _setup(model, device, dtype, max(ns) + steps + 16, "dense", None, attention_flags(dca), cuda_graphs,
                 tensor_parallel_size)
    ceilings = _ceilings(llm)
    rows = bench_decode(llm, ns, steps, repeat, seed, ceilings)
    graphs_used = llm.engine.runner.graphs is not None and bool(llm.engine.runner.graphs.graphs)
    if graphs_used:
        for r in rows:
            r["engine"] = "turboctx+graphs"     # said only when decode really replayed graphs
    env = environment(llm.engine.device)
    if compare == "hf":
        from turboctx.bench.hf_compare import hf_decode
        m, dev, dt = llm.engine.model_config, llm.engine.device, llm.engine.config.dtype
        llm.shutdown()
        del llm
        rows += hf_decode(m, ns, steps, repeat, seed, dev, dt)
    print_table(f"decode: {model} on {env.get('gpu', env['device'])} - copy {ceilings['copy_gbps']:.0f} GB/s",
                rows, _columns(DECODE_COLUMNS, rows))
    if json_path:
        write_json(json_path, {"kind": "decode", "model": model, "cuda_graphs": graphs_used, "env": env,
                               "ceilings": ceilings, "rows": rows})


def _mount_serve_bench() -> None:
    try:
        from turboctx.server.bench_serve import serve as bench_serve
    except ModuleNotFoundError:     # the server extra is not installed
        return
    bench_app.command("serve", help="throughput and latency percentiles of an OpenAI-compatible server")(bench_serve)


_mount_serve_bench()
