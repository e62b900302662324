"""`turboctx` command line: generate, ask, chat, info, serve, eval, bench, calibrate, context.

Errors are one line on stderr (`error: ...`) with exit code 2 (1 for documents that do not fit
the model or the memory), never a traceback: bad engine options name the option, an unknown flag
names the closest known one, and a vLLM flag that turboctx does not have says so.
"""
from __future__ import annotations


import typer

from turboctx.errors import TurboctxError

try:     # typer >= 0.22 carries its own copy of click
    from typer._click.exceptions import NoSuchOption, UsageError
except ImportError:  # pragma: no cover - older typer on click
    from click.exceptions import NoSuchOption, UsageError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Long-context LLM inference: chunked prefill, DCA, sparse prefill.")

# vLLM flags with no turboctx counterpart (a vLLM command line carries over but for these)
VLLM_ONLY = {
    "--trust-remote-code": None,
    "--tokenizer": None, "--revision": None, "--download-dir": None, "--load-format": None,
    "--pipeline-parallel-size": None, "-pp": "--pipeline-parallel-size",
    "--data-parallel-size": None, "-dp": "--data-parallel-size", "--swap-space": None,
    "--cpu-offload-gb": None, "--max-logprobs": None,
    "--enable-lora": None, "--lora-modules": None, "--speculative-config": None,
    "--guided-decoding-backend": None, "--reasoning-parser": None, "--rope-scaling": None,
    "--rope-theta": None, "--hf-overrides": None, "--tokenizer-mode": None,
    "--distributed-executor-backend": None, "--compilation-config": None, "-O": "--compilation-config",
    "--max-seq-len-to-capture": None, "--disable-custom-all-reduce": None,
    "--enable-chunked-prefill": "chunked prefill is always on in turboctx",
    "--no-enable-chunked-prefill": "chunked prefill is always on in turboctx",
    "--max-num-partial-prefills": None, "--long-prefill-token-threshold": None,
    "--scheduling-policy": None, "--task": None,
    "--disable-log-stats": None, "--disable-log-requests": None, "--uvicorn-log-level": None,
    "--ssl-keyfile": None, "--ssl-certfile": None, "--root-path": None, "--allowed-origins": None,
    "--limit-mm-per-prompt": None, "--kv-transfer-config": None, "--calculate-kv-scales": None,
}


_MOUNTED: list[bool] = []


def full_app() -> typer.Typer:
    """The app with every command mounted (done once, on first use: the command modules import
    this package for `app` and the engine options)."""
    if _MOUNTED:
        return app
    _MOUNTED.append(True)
    from turboctx.cli import ask, chat, generate, info   # noqa: F401  (they register their commands)
    for module, attr, name, help_ in (
            ("turboctx.eval.cli", "eval_app", "eval", "long-context evaluation: passkey, niah, ruler, ppl"),
            ("turboctx.bench.cli", "bench_app", "bench", "benchmarks: prefill, decode, serve"),
            ("turboctx.cli.context", "context_app", "context", "kept contexts: list, rm"),
            ("turboctx.server.cli", "serve_app", None, None),
            ("turboctx.calibration.cli", "calibrate_app", None, None)):
        try:
            mod = __import__(module, fromlist=[attr])
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):
                continue    # that part of turboctx is not in this build
            raise
        sub = getattr(mod, attr)
        if name:
            app.add_typer(sub, name=name, help=help_)
        else:
            app.registered_commands.extend(sub.registered_commands)
    return app


def usage_error(e: UsageError) -> str:
    """One line for a command-line mistake."""
    if isinstance(e, NoSuchOption) and e.option_name in VLLM_ONLY:
        note = VLLM_ONLY[e.option_name]
        name = note if note and note.startswith("--") else e.option_name
        why = note if note and not note.startswith("--") else "turboctx does not support it"
        return f"{name} is a vLLM option; {why}"
    msg = e.format_message().replace("\n", " ")
    cmd = e.ctx.command_path if e.ctx is not None else "turboctx"
    return f"{msg} (see `{cmd} --help`)"


def main(argv: list[str] | None = None) -> None:
    try:
        code = full_app()(args=argv, standalone_mode=False, prog_name="turboctx")
    except UsageError as e:
        typer.echo(f"error: {usage_error(e)}", err=True)
        raise SystemExit(2)
    except TurboctxError as e:
        typer.echo(f"error: {e}", err=True)
        raise SystemExit(getattr(e, "exit_code", 2))   # 1: documents that do not fit
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("interrupted", err=True)
        raise SystemExit(130)
    if isinstance(code, int) and code:
        raise SystemExit(code)
