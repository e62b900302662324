"""`turboctx serve`: the OpenAI-compatible HTTP server (mounted into the top-level CLI)."""
from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from turboctx.cli.engine_options import engine_options
from turboctx.errors import InvalidRequestError
from turboctx.structured.tool_parsers import TOOL_PARSERS

serve_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
log = logging.getLogger("turboctx.server")
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def served_names(engine, served_model_name: list[str] | None) -> list[str]:
    """The names clients may use: --served-model-name's, else the model's own names."""
    if served_model_name:
        return list(dict.fromkeys(served_model_name))
    names = [DEFAULT_MODEL_NAME] if engine.checkpoint.kind == "default" else []
    names.append(engine.model_name)
    spec = engine.config.model.model
    if spec:
        names += [spec, Path(spec).name.removesuffix(".gguf")]
    return list(dict.fromkeys(n for n in names if n)) or ["default"]


def build_engine(options: dict):
    from turboctx.config import EngineConfig
    from turboctx.engine.llm_engine import LLMEngine
    return LLMEngine(EngineConfig.from_options(**options))


@serve_app.command()
@engine_options()
def serve(model_arg: Annotated[Optional[str], typer.Argument(metavar="MODEL", help="HF folder, .gguf file or random:<preset> (as `vllm serve MODEL`; --model too); default: SmolLM2-135M-Instruct")] = None,
          host: Annotated[str, typer.Option(help="address to bind; 0.0.0.0 exposes the server to the network")] = "127.0.0.1",
          port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
          api_key: Annotated[Optional[str], typer.Option(envvar="TURBOCTX_API_KEY", help="require 'Authorization: Bearer KEY' (all endpoints but /health)")] = None,
          served_model_name: Annotated[Optional[list[str]], typer.Option(help="model name(s) clients use; repeatable")] = None,
          max_waiting: Annotated[int, typer.Option(min=1, help="requests allowed to wait for memory before 429")] = 4096,
          max_body_bytes: Annotated[int, typer.Option(min=1024, help="request body size limit")] = 64 << 20,
          shutdown_timeout: Annotated[float, typer.Option(min=0, help="seconds running requests may finish after SIGTERM/SIGINT before they are cancelled")] = 30.0,
          threads: Annotated[Optional[int], typer.Option(min=1, help="torch CPU threads (fewer than cores avoids oversubscription)")] = None,
          log_level: Annotated[str, typer.Option(help="debug | info | warning")] = "info",
          chat_template: Annotated[Optional[str], typer.Option(help="a jinja chat template FILE used instead of the model's, or 'hermes': the Hermes tool-calling form Qwen2.5 uses (ChatML), shipped with turboctx, for models whose own template renders no tools")] = None,
          tool_call_parser: Annotated[Optional[str], typer.Option(help="how tool calls are read from the model's text: hermes (<tool_call> JSON) | llama3_json; default: what the chat template writes")] = None,
          enable_auto_tool_choice: Annotated[bool, typer.Option(help="accepted for vLLM command lines: tool_choice 'auto' is always served when the chat template renders tools")] = False,
          kept_contexts: Annotated[bool, typer.Option(help="a prompt that starts with a context kept by `ask/chat --keep-context` (same model and setup) loads its KV from host RAM or disk instead of prefilling it")] = True,
          *, options: dict):
    """OpenAI-compatible server: /v1/chat/completions, /v1/completions, /v1/models, /tokenize,
    /detokenize, /tokenizer_info, /health, /metrics."""
    import torch

    if model_arg is not None:
        if options.get("model") not in (None, model_arg):
            raise InvalidRequestError(f"two models given: {model_arg!r} and --model "
                                      f"{options['model']!r}; give one")
        options["model"] = model_arg
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if threads:
        torch.set_num_threads(threads)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        log.warning("binding %s without --api-key: anyone who can reach this address can use the server", host)
    template = load_chat_template(chat_template)
    if tool_call_parser is not None and tool_call_parser not in TOOL_PARSERS:
        raise InvalidRequestError(f"--tool-call-parser {tool_call_parser!r} is not one of "
                                  f"{', '.join(TOOL_PARSERS)}")
    t0 = time.perf_counter()
    engine = build_engine(options)
    phases = engine.warm_up()
    log.info("ready in %.1f s: load %.1f s, KV cache %.1f s, warm-up %.1f s (graph capture %.1f s)",
             time.perf_counter() - t0, phases["load_s"], phases["kv_cache_s"], phases["warmup_s"],
             phases["graph_capture_s"])
    if kept_contexts:
        attach_kept_contexts(engine)
    try:
        _run_server(engine, served_model_name, host, port, api_key, max_waiting, max_body_bytes,
                    shutdown_timeout, log_level, template, tool_call_parser)
    finally:
        engine.shutdown()           # every tensor-parallel rank ends with the server


def attach_kept_contexts(engine) -> None:
    """Requests starting with a kept context load it (engine/kept_contexts.py); where kept
    contexts cannot be used (tensor parallelism, no prefix cache) the server says so and runs."""
    from turboctx.errors import TurboctxError
    try:
        kept = engine.attach_context_store(match_prompts=True)
    except TurboctxError as e:
        log.warning("kept contexts off: %s", e)
        return
    names = [m.name for m in kept.store.metas() if m.digest == kept.digest]
    log.info("kept contexts: %s in %s", ", ".join(names) if names else "none of this setup yet",
             ", ".join(f"{t.name} {t.root}" for t in kept.store.tiers))


def load_chat_template(spec: str | None) -> str | None:
    """--chat-template: None, 'hermes' (the shipped tool template) or a file's text."""
    if spec is None:
        return None
    if spec == "hermes":
        from turboctx.structured import hermes_tool_chat_template
        return hermes_tool_chat_template()
    path = Path(spec)
    if not path.is_file():
        raise InvalidRequestError(f"--chat-template {spec!r} is neither 'hermes' nor a file")
    return path.read_text(encoding="utf-8")


def _run_server(engine, served_model_name, host, port, api_key, max_waiting, max_body_bytes,
                shutdown_timeout, log_level, chat_template, tool_call_parser) -> None:
    import uvicorn

    from turboctx.server.app import create_app
    from turboctx.server.engine_loop import EngineLoop
    from turboctx.server.metrics import ServerMetrics
    names = served_names(engine, served_model_name)
    loop = EngineLoop(engine, ServerMetrics(), max_waiting=max_waiting)
    app = create_app(loop, model_names=names, api_key=api_key, max_body_bytes=max_body_bytes,
                     chat_template=chat_template, tool_call_parser=tool_call_parser)
    cfg = uvicorn.Config(app, host=host, port=port, log_level=log_level.lower(),
                         timeout_graceful_shutdown=int(shutdown_timeout) + 5, access_log=False)
    server = GracefulServer(cfg, loop, shutdown_timeout)
    kv = engine.kv_cache_usage()
    log.info("model %s as %s; max_model_len %d; attention %s; KV cache %d blocks x %d tokens; "
             "http://%s:%d", engine.config.model.model or "default", names,
             engine.config.max_model_len, engine.attention_setup(), kv.total_blocks,
             kv.block_size, host, port)
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
    from turboctx.cli import main
    main(["serve", *__import__("sys").argv[1:]])
