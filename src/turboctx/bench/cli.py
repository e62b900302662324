"""`turboctx bench prefill|decode|context|coldstart` (and `serve`, the load generator)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from turboctx.cli.engine_options import engine_options
from turboctx.cli.parsing import option_sizes

bench_app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

PREFILL_COLUMNS = ["engine", "length", "ttft_s", "ttft_min_s", "ttft_max_s", "tokens_per_s", "tflops",
                   "fraction_of_matmul_ceiling", "over_floor", "peak_memory_gib", "usd_per_mtok"]
SPARSE_COLUMNS = ["density", "estimate_s", "estimate_fraction", "sparse_attend_s"]
DECODE_COLUMNS = ["engine", "context", "batch", "ms_per_token", "ms_min", "ms_max", "tokens_per_s",
                  "floor_tokens_per_s", "gb_per_s", "floor_ms", "peak_memory_gib"]
PER_RANK_COLUMN = "peak_memory_gib_per_rank"     # shown when tensor parallelism is on
BENCH_SETS = ("max_model_len", "kv_cache_tokens", "max_num_seqs", "enable_prefix_caching")
BENCH_MODEL = {"model": "random:qwen2.5-7b"}


def _setup(options: dict, max_len: int, num_seqs: int = 1):
    """An engine for num_seqs requests of max_len tokens: the cache holds exactly that (peak
    memory is that of the length), and no prefix cache (repeated runs of one prompt must each
    compute it)."""
    from turboctx import LLM
    return LLM(**options, max_model_len=max_len, kv_cache_tokens=max_len * num_seqs,
               max_num_seqs=num_seqs, enable_prefix_caching=False)


def _ceilings(llm) -> dict:
    eng = llm.engine
    return _measure_ceilings(eng.architecture, eng.device, eng.config.dtype)


def _measure_ceilings(m, device, dtype) -> dict:
    """Matmul, attention and copy ceilings of one device (a rank's, under tensor parallelism)."""
    from turboctx.bench.flops import attention_tflops, copy_gbps, matmul_tflops
    att, n = attention_tflops(m, device, dtype)
    return {"matmul_tflops": matmul_tflops(device, dtype), "attention_tflops": att,
            "attention_probe_tokens": n, "copy_gbps": copy_gbps(device)}


def _columns(columns: list[str], rows: list[dict]) -> list[str]:
    return columns + ([PER_RANK_COLUMN] if any(r.get(PER_RANK_COLUMN) for r in rows) else [])


@bench_app.command()
@engine_options(exclude=BENCH_SETS, defaults=BENCH_MODEL)
def prefill(lengths: Annotated[str, typer.Option(help="prompt lengths, e.g. 32k,128k,1m")] = "32k,128k",
            repeat: Annotated[int, typer.Option(min=1)] = 3,
            compare: Annotated[Optional[str], typer.Option(help="'hf': HF transformers in the same run")] = None,
            price_per_gpu_hour: Annotated[Optional[float], typer.Option(help="USD; adds cost per 1M prompt tokens")] = None,
            json_path: Annotated[Optional[Path], typer.Option("--json")] = None,
            plot: Annotated[Optional[Path], typer.Option(help="PNG: TTFT vs length")] = None,
            profile: Annotated[Optional[Path], typer.Option(help="folder: one more run per length under torch.profiler (op table + Chrome trace)")] = None,
            *, options: dict):
    """Time to first token per prompt length, against the ceilings measured in the same run."""
    import torch

    from turboctx.bench.prefill import bench_prefill
    from turboctx.bench.report import environment, plot_ttft, print_table, write_json
    from turboctx.config import EngineConfig
    from turboctx.weights import open_checkpoint
    ns = option_sizes(lengths)
    if compare not in (None, "hf"):
        raise typer.BadParameter(f"--compare {compare!r}: only 'hf' is supported")
    model, seed = options["model"], options.get("seed", 0)
    # the ceilings need only the model's shape: no engine (under TP, no worker processes) for them
    checkpoint = open_checkpoint(model)
    m = checkpoint.config
    cfg = EngineConfig.from_options(**options).resolve(m)
    dev, torch_dtype, tp = cfg.device, cfg.dtype, cfg.parallel.tensor_parallel_size
    ceilings = _measure_ceilings(m, dev, torch_dtype)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    rows = bench_prefill(lambda n: _setup(options, n + 16), ns, repeat, seed, ceilings, profile)
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
    _store_rates(rows, m, checkpoint.source, cfg, env["date"])
    gpus = f"{tp} x " if tp > 1 else ""
    print_table(f"prefill: {model} ({cfg.model.dtype}, {cfg.attention_name}) on "
                f"{gpus}{env.get('gpu', env['device'])} - matmul {ceilings['matmul_tflops']:.0f} TFLOP/s, "
                f"attention {ceilings['attention_tflops']:.0f} TFLOP/s (per device)", rows,
                _columns(PREFILL_COLUMNS + (SPARSE_COLUMNS if any("density" in r for r in rows) else []), rows))
    if json_path:
        write_json(json_path, {"kind": "prefill", "model": model, "attention": cfg.attention_name,
                               "options": options, "tensor_parallel_size": tp,
                               "env": env, "ceilings": ceilings, "rows": rows})
    if plot:
        plot_ttft(plot, rows, f"TTFT, {model}, {env.get('gpu', env['device'])}")


def _store_rates(rows: list[dict], m, model: str, cfg, date: str) -> None:
    """The measured tokens/s by length, for the plan of `turboctx ask` (bench/rates.py)."""
    from turboctx.bench.rates import architecture_key, device_name, rates_from_rows, store_rates
    rates = rates_from_rows(rows, device=device_name(cfg.device), model=model,
                            architecture=architecture_key(m), attention=cfg.attention_name,
                            dtype=cfg.model.dtype, tensor_parallel_size=cfg.parallel.tensor_parallel_size,
                            date=date)
    if rates:
        path = store_rates(rates)
        typer.echo(f"prefill rates stored in {path} (the plan of `turboctx ask` reads them)", err=True)


@bench_app.command()
@engine_options(exclude=BENCH_SETS, defaults=BENCH_MODEL)
def decode(lengths: Annotated[str, typer.Option(help="context lengths, e.g. 128k,1m")] = "32k,128k",
           steps: Annotated[int, typer.Option(min=2, help="tokens decoded per run")] = 64,
           batch: Annotated[int, typer.Option(min=1, help="requests decoding side by side, each at "
                                                           "the context length")] = 1,
           repeat: Annotated[int, typer.Option(min=1)] = 3,
           compare: Annotated[Optional[str], typer.Option(help="'hf': HF transformers in the same run")] = None,
           json_path: Annotated[Optional[Path], typer.Option("--json")] = None,
           *, options: dict):
    """Decode ms/token at long context (synthetic random-valued cache: no prefill needed)."""
    from turboctx.bench.decode import bench_decode
    from turboctx.bench.report import environment, print_table, write_json
    ns = option_sizes(lengths)
    model, seed = options["model"], options.get("seed", 0)
    llm = _setup(options, max(ns) + steps + 16, batch)
    ceilings = _ceilings(llm)
    rows = bench_decode(llm, ns, steps, repeat, seed, ceilings, batch)
    graphs = llm.engine.captured_graph_sizes()
    if graphs:
        for r in rows:
            r["engine"] = "turboctx+graphs"     # said only when decode really replayed graphs
    env = environment(llm.engine.device)
    attention, setup = llm.config.attention_name, llm.engine.attention_setup()
    if compare == "hf":
        from turboctx.bench.hf_compare import hf_decode
        m, dev, dt = llm.engine.architecture, llm.engine.device, llm.config.dtype
        llm.shutdown()
        del llm
        rows += hf_decode(m, ns, steps, repeat, seed, dev, dt)
    print_table(f"decode: {model} ({attention}) on {env.get('gpu', env['device'])} - copy "
                f"{ceilings['copy_gbps']:.0f} GB/s", rows, _columns(DECODE_COLUMNS, rows))
    if json_path:
        write_json(json_path, {"kind": "decode", "model": model, "attention": attention,
                               "attention_setup": setup, "options": options,
                               "cuda_graph_sizes": graphs, "env": env,
                               "ceilings": ceilings, "rows": rows})


def _mount_serve_bench() -> None:
    try:
        from turboctx.bench.serve import serve as bench_serve
    except ModuleNotFoundError:     # the openai client is not installed
        return
    bench_app.command("serve", help="throughput and latency percentiles of an OpenAI-compatible server")(bench_serve)


_mount_serve_bench()


CONTEXT_COLUMNS = ["phase", "weights_load_s", "ttft_s", "keep_s", "load_tier", "load_s", "load_gb_per_s",
                   "first_token_after_weights_s", "fraction_of_prefill", "cached_tokens", "first_token"]


@bench_app.command()
@engine_options(exclude=BENCH_SETS, defaults=BENCH_MODEL)
def context(length: Annotated[str, typer.Option(help="tokens of the kept context, e.g. 128k, 1m")] = "32k",
            phases: Annotated[str, typer.Option(help="keep,ram,disk: each a new process")] = "keep,ram,disk",
            json_path: Annotated[Optional[Path], typer.Option("--json")] = None,
            *, options: dict):
    """A kept context: prefill and keep it, then a new process's time to first token loading it
    from host RAM and from disk (TURBOCTX_HOME, TURBOCTX_CONTEXT_RAM_DIR say where)."""
    import torch

    from turboctx.bench.kept_context import bench_context
    from turboctx.bench.report import environment, print_table, write_json
    from turboctx.errors import InvalidRequestError
    n = option_sizes(length)
    if len(n) != 1:
        raise InvalidRequestError(f"--length takes one length, got {length!r}")
    chosen = [p.strip() for p in phases.split(",") if p.strip()]
    bad = [p for p in chosen if p not in ("keep", "ram", "disk")]
    if bad or not chosen:
        raise InvalidRequestError(f"--phases {phases!r}: give some of keep, ram, disk")
    rows = bench_context(options, n[0], options.get("seed", 0), chosen)
    env = environment(torch.device(options.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")))
    print_table(f"kept context: {options['model']}, {n[0]} tokens on {env.get('gpu', env['device'])}",
                rows, CONTEXT_COLUMNS)
    if json_path:
        write_json(json_path, {"kind": "kept_context", "model": options["model"], "length": n[0],
                               "options": options, "env": env, "rows": rows})


COLDSTART_COLUMNS = ["run", "to_ready_s", "before_engine_s", "load_s", "kv_cache_s", "warmup_s",
                     "graph_capture_s", "first_request_s", "to_first_token_s"]


@bench_app.command()
@engine_options()
def coldstart(repeat: Annotated[int, typer.Option(min=1, help="new server processes, one after the other")] = 1,
              json_path: Annotated[Optional[Path], typer.Option("--json")] = None,
              *, options: dict):
    """A new `turboctx serve` process (these engine flags) to its first token, split into the
    process start, weights load, KV cache, warm-up (compile + graph capture) and the request."""
    from turboctx.bench.coldstart import cold_start
    from turboctx.bench.report import environment, print_table, write_json
    rows = [{"run": i + 1, **cold_start(options)} for i in range(repeat)]
    print_table(f"cold start: turboctx serve {options.get('model') or '(default model)'}", rows,
                COLDSTART_COLUMNS)
    if json_path:
        import torch

        from turboctx.config.engine import resolve_device
        device = torch.device(resolve_device(options.get("device") or "auto", torch.cuda.is_available()))
        write_json(json_path, {"kind": "coldstart", "options": options, "env": environment(device),
                               "rows": rows})
