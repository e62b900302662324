"""`turboctx serve`: the OpenAI-compatible HTTP server (mounted into the top-level CLI)."""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from turboctx.cli_options import (Attention, Dca, SparseConfigFile, SparseDenseTail, SparseThreshold,
                                  attention_flags)

serve_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
log = logging.getLogger("turboctx.server")
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def served_names(model: str | None, engine, served_model_name: list[str] | None) -> list[str]:
    if served_model_name:
        return list(dict.fromkeys(served_model_name))
    names = [DEFAULT_MODEL_NAME] if engine.checkpoint.kind == "default" else []
    names += [engine.model_config.name] if engine.model_config.name else []
    if model:
        names += [model, Path(model).name.removesuffix(".gguf")]
    return list(dict.fromkeys(n for n in names if n)) or ["default"]


def build_engine(model, *, device=None, dtype=None, max_model_len=None, prefill_chunk_size=None,
                 kv_cache_tokens=None, max_num_seqs=64, attention="dense", dca=None,
                 enable_prefix_caching=True, sparse_threshold=None, tensor_parallel_size=1,
                 sparse_config=None, sparse_dense_tail=None):
    from turboctx.engine.llm_engine import LLMEngine
    extra = attention_flags(dca, sparse_threshold, sparse_config, sparse_dense_tail)
    if tensor_parallel_size != 1:
        extra["tensor_parallel_size"] = tensor_parallel_size
    return LLMEngine(model, device=device, dtype=dtype, max_model_len=max_model_len,
                     prefill_chunk_size=prefill_chunk_size, kv_cache_tokens=kv_cache_tokens,
                     max_num_seqs=max_num_seqs, attention=attention,
                     enable_prefix_caching=enable_prefix_caching, **extra)


@serve_app.command()
def serve(model: Annotated[Optional[str], typer.Option("--model", "-m", help="HF folder, .gguf file, random:<preset>; default: SmolLM2-135M-Instruct")] = None,
          host: Annotated[str, typer.Option(help="address to bind; 0.0.0.0 exposes the server to the network")] = "127.0.0.1",
          port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
          api_key: Annotated[Optional[str], typer.Option(envvar="TURBOCTX_API_KEY", help="require 'Authorization: Bearer KEY' (all endpoints but /health)")] = None,
          served_model_name: Annotated[Optional[list[str]], typer.Option(help="model name(s) clients use; repeatable")] = None,
          max_model_len: Annotated[Optional[int], typer.Option(help="longest prompt + output, in tokens")] = None,
          device: Annotated[Optional[str], typer.Option(help="cpu | cuda | cuda:N")] = None,
          dtype: Annotated[Optional[str], typer.Option(help="float32 | bfloat16 | float16")] = None,
          dca: Dca = None, attention: Attention = "dense", sparse_threshold: SparseThreshold = None,
          sparse_config: SparseConfigFile = None, sparse_dense_tail: SparseDenseTail = None,
          max_num_seqs: Annotated[int, typer.Option(min=1, help="requests decoded together")] = 64,
          kv_cache_tokens: Annotated[Optional[int], typer.Option(help="KV-cache size in tokens (default: from free memory)")] = None,
          prefill_chunk_size: Annotated[Optional[int], typer.Option(help="prefill tokens per step")] = None,
          prefix_caching: Annotated[bool, typer.Option("--prefix-caching/--no-prefix-caching", help="reuse the KV of a prompt prefix seen before (LRU-evicted under memory pressure)")] = True,
          max_waiting: Annotated[int, typer.Option(min=1, help="requests allowed to wait for memory before 429")] = 4096,
          max_body_bytes: Annotated[int, typer.Option(min=1024, help="request body size limit")] = 64 << 20,
          shutdown_timeout: Annotated[float, typer.Option(min=0, help="seconds running requests may finish after SIGTERM/SIGINT before they are cancelled")] = 30.0,
          threads: Annotated[Optional[int], typer.Option(min=1, help="torch CPU threads (fewer than cores avoids oversubscription)")] = None,
          tensor_parallel_size: Annotated[int, typer.Option("--tensor-parallel-size", min=1, help="split the model over this many processes (GPUs), Megatron-style")] = 1,
          log_level: Annotated[str, typer.Option(help="debug | info | warning")] = "info"):
    """OpenAI-compatible server: /v1/chat/completions, /v1/completions, /v1/models, /health, /metrics."""
    import torch

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if threads:
        torch.set_num_threads(threads)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        log.warning("binding %s without --api-key: anyone who can reach this address can use the server", host)
    engine = build_engine(model, device=device, dtype=dtype, max_model_len=max_model_len,
                          prefill_chunk_size=prefill_chunk_size, kv_cache_tokens=kv_cache_tokens,
                          max_num_seqs=max_num_seqs, attention=attention, dca=dca,
                          enable_prefix_caching=prefix_caching, sparse_threshold=sparse_threshold,
                          tensor_parallel_size=tensor_parallel_size, sparse_config=sparse_config,
                          sparse_dense_tail=sparse_dense_tail)
    try:
        _run_server(engine, model, served_model_name, host, port, api_key, max_waiting, max_body_bytes,
                    shutdown_timeout, log_level)
    finally:
        engine.shutdown()           # every tensor-parallel rank ends with the server


def _run_server(engine, model, served_model_name, host, port, api_key, max_waiting, max_body_bytes,
                shutdown_timeout, log_level) -> None:
    import uvicorn

    from turboctx.server.app import create_app
    from turboctx.server.engine_loop import EngineLoop
    from turboctx.server.metrics import ServerMetrics
    names = served_names(model, engine, served_model_name)
    loop = EngineLoop(engine, ServerMetrics(), max_waiting=max_waiting)
    app = create_app(loop, model_names=names, api_key=api_key, max_body_bytes=max_body_bytes)
    cfg = uvicorn.Config(app, host=host, port=port, log_level=log_level.lower(),
                         timeout_graceful_shutdown=int(shutdown_timeout) + 5, access_log=False)
    server = GracefulServer(cfg, loop, shutdown_timeout)
    a = engine.allocator
    log.info("model %s as %s; max_model_len %d; KV cache %d blocks x %d tokens; http://%s:%d",
             model or "default", names, engine.config.max_model_len, a.num_blocks,
             engine.config.block_size, host, port)
    server.run()


class GracefulServer:
    """uvicorn.Server whose exit signal first stops the engine loop from taking requests and gives
    running ones `grace_s` to finish before they are cancelled with an error event."""

    def __new__(cls, config, engine_loop, grace_s: float):
        import uvicorn

        class _Server(uvicorn.Server):
            def handle_exit(self, sig, frame):
                engine_loop.begin_shutdown(grace_s)
                super().handle_exit(sig, frame)

            @contextlib.contextmanager
            def capture_signals(self):
                # uvicorn re-raises the exit signal once it has stopped, so the process would end
                # "killed by SIGTERM"; the shutdown was orderly, so exit with status 0 instead.
                with super().capture_signals():
                    try:
                        yield
                    finally:
                        getattr(self, "_captured_signals", []).clear()
        return _Server(config)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    serve_app()
