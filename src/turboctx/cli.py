"""`turboctx` command line: generate, chat, ask, info (+ eval, bench, serve, calibrate)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from turboctx.cli_options import (Attention, Dca, SparseConfigFile, SparseDenseTail, SparseThreshold,
                                  attention_flags)
from turboctx.errors import TurboctxError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Long-context LLM inference: chunked prefill, DCA, sparse prefill.")

Model = Annotated[Optional[str], typer.Option("--model", "-m", help="HF folder, .gguf file, random:<preset>; default: SmolLM2-135M-Instruct")]
Device = Annotated[Optional[str], typer.Option(help="cpu | cuda | cuda:N (default: cuda if available)")]
Dtype = Annotated[Optional[str], typer.Option(help="float32 | bfloat16 | float16")]
MaxModelLen = Annotated[Optional[int], typer.Option(help="longest prompt + output, in tokens")]
ChunkSize = Annotated[Optional[int], typer.Option(help="prefill chunk, in tokens")]
MaxTokens = Annotated[int, typer.Option(help="tokens to generate")]
Temperature = Annotated[float, typer.Option(help="0 = greedy")]
Seed = Annotated[Optional[int], typer.Option(help="sampling seed")]
AsJson = Annotated[bool, typer.Option("--json", help="machine-readable output")]
TensorParallel = Annotated[int, typer.Option("--tensor-parallel-size", min=1, help="split the model over this many processes (GPUs), Megatron-style")]


def engine_kwargs(model, device, dtype, max_model_len, prefill_chunk_size, attention="dense",
                  sparse_threshold=None, tensor_parallel_size=1, dca=None, sparse_config=None,
                  sparse_dense_tail=None) -> dict:
    return dict(model=model, device=device, dtype=dtype, max_model_len=max_model_len,
                prefill_chunk_size=prefill_chunk_size, attention=attention,
                tensor_parallel_size=tensor_parallel_size,
                **attention_flags(dca, sparse_threshold, sparse_config, sparse_dense_tail))


def load_llm(**kw):
    from turboctx import LLM
    return LLM(kw.pop("model"), **kw)


def output_dict(out) -> dict:
    from dataclasses import asdict
    return {"text": out.text, "token_ids": out.token_ids, "finish_reason": out.finish_reason,
            "num_prompt_tokens": len(out.prompt_token_ids), "metrics": asdict(out.metrics),
            **({"logprobs": [{str(k): v for k, v in d.items()} for d in out.logprobs]}
               if out.logprobs is not None else {})}


def _stream_print(llm, prompt: str, params, chat: bool, as_json: bool) -> None:
    last, printed = None, 0
    for out in llm.stream(prompt, params, chat=chat):
        last = out
        if not as_json:
            sys.stdout.write(out.text[printed:])
            sys.stdout.flush()
            printed = len(out.text)
    if as_json:
        print(json.dumps(output_dict(last)))
    else:
        sys.stdout.write("\n")
        m = last.metrics
        typer.echo(f"[{m.num_prompt_tokens} prompt tokens, TTFT {m.ttft_s:.2f} s, "
                   f"{m.num_generated_tokens} generated"
                   + (f", {m.decode_tokens_per_s:.1f} tok/s" if m.decode_tokens_per_s else "")
                   + f", finish: {last.finish_reason}]", err=True)


def _params(max_tokens, temperature, seed, logprobs=None):
    from turboctx import SamplingParams
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed, logprobs=logprobs)


@app.command()
def generate(prompt: Annotated[Optional[str], typer.Argument(help="the prompt text")] = None,
             prompt_file: Annotated[Optional[Path], typer.Option(help="read the prompt from a file")] = None,
             model: Model = None, device: Device = None, dtype: Dtype = None,
             max_model_len: MaxModelLen = None, prefill_chunk_size: ChunkSize = None,
             max_tokens: MaxTokens = 64, temperature: Temperature = 0.0, seed: Seed = None,
             logprobs: Annotated[Optional[int], typer.Option(help="top-k logprobs per token (with --json)")] = None,
             attention: Attention = "dense", sparse_threshold: SparseThreshold = None,
             sparse_config: SparseConfigFile = None, dca: Dca = None,
             sparse_dense_tail: SparseDenseTail = None,
             tensor_parallel_size: TensorParallel = 1, as_json: AsJson = False):
    """Continue a prompt (no chat template)."""
    text = _read_prompt(prompt, prompt_file)
    params = _params(max_tokens, temperature, seed, logprobs)
    with load_llm(**engine_kwargs(model, device, dtype, max_model_len, prefill_chunk_size,
                                  attention, sparse_threshold, tensor_parallel_size, dca,
                                  sparse_config, sparse_dense_tail)) as llm:
        _stream_print(llm, text, params, chat=False, as_json=as_json)


@app.command()
def ask(question: Annotated[str, typer.Argument(help="the question about the document")],
        file: Annotated[Path, typer.Option("--file", "-f", help="the document (whole file as context)")],
        model: Model = None, device: Device = None, dtype: Dtype = None,
        max_model_len: MaxModelLen = None, prefill_chunk_size: ChunkSize = None,
        max_tokens: MaxTokens = 256, temperature: Temperature = 0.0, seed: Seed = None,
        attention: Attention = "dense", sparse_threshold: SparseThreshold = None,
        sparse_config: SparseConfigFile = None, dca: Dca = None,
        sparse_dense_tail: SparseDenseTail = None,
        tensor_parallel_size: TensorParallel = 1, as_json: AsJson = False):
    """Answer a question about a whole document (chat template applied)."""
    doc = _read_file(file)
    params = _params(max_tokens, temperature, seed)
    with load_llm(**engine_kwargs(model, device, dtype, max_model_len, prefill_chunk_size,
                                  attention, sparse_threshold, tensor_parallel_size, dca,
                                  sparse_config, sparse_dense_tail)) as llm:
        prompt = llm.chat_prompt([{"role": "user", "content": f"{doc}\n\nQuestion: {question}"}])
        _stream_print(llm, prompt, params, chat=True, as_json=as_json)


@app.command()
def chat(model: Model = None, device: Device = None, dtype: Dtype = None,
         max_model_len: MaxModelLen = None, prefill_chunk_size: ChunkSize = None,
         max_tokens: MaxTokens = 512, temperature: Temperature = 0.7, seed: Seed = None,
         system: Annotated[Optional[str], typer.Option(help="system prompt")] = None,
         attention: Attention = "dense", sparse_threshold: SparseThreshold = None,
         sparse_config: SparseConfigFile = None, dca: Dca = None,
         sparse_dense_tail: SparseDenseTail = None,
         tensor_parallel_size: TensorParallel = 1):
    """Interactive chat on the terminal (/exit or Ctrl-D to leave, /reset to clear)."""
    params = _params(max_tokens, temperature, seed)
    with load_llm(**engine_kwargs(model, device, dtype, max_model_len, prefill_chunk_size,
                                  attention, sparse_threshold, tensor_parallel_size, dca,
                                  sparse_config, sparse_dense_tail)) as llm:
        _chat_loop(llm, params, system)


def _chat_loop(llm, params, system: str | None) -> None:
    history = [{"role": "system", "content": system}] if system else []
    typer.echo("chat: /exit to leave, /reset to clear the history", err=True)
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            typer.echo("", err=True)
            return
        if line.strip() in ("/exit", "/quit"):
            return
        if line.strip() == "/reset":
            history = history[:1] if system else []
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        try:
            prompt = llm.chat_prompt(history)
            reply = ""
            for out in llm.stream(prompt, params, chat=True):
                sys.stdout.write(out.text[len(reply):])
                sys.stdout.flush()
                reply = out.text
            sys.stdout.write("\n")
            history.append({"role": "assistant", "content": reply})
        except TurboctxError as e:
            history.pop()
            typer.echo(f"error: {e}", err=True)


@app.command()
def info(model: Model = None, device: Device = None, dtype: Dtype = None,
         max_model_len: MaxModelLen = None, prefill_chunk_size: ChunkSize = None,
         as_json: AsJson = False):
    """Model, dtype, device and memory plan (weights, KV bytes per token, tokens that fit)."""
    from turboctx.engine.plan import memory_plan
    plan = memory_plan(model, device=device, dtype=dtype, max_model_len=max_model_len,
                       prefill_chunk_size=prefill_chunk_size)
    if as_json:
        print(json.dumps(plan, indent=2))
        return
    for k, v in plan.items():
        typer.echo(f"{k:>28}: {v}")


def _read_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TurboctxError(f"file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TurboctxError(f"cannot read {str(path)!r} as UTF-8 text: {e}") from None


def _read_prompt(prompt: str | None, prompt_file: Path | None) -> str:
    if (prompt is None) == (prompt_file is None):
        raise TurboctxError("give the prompt as an argument or with --prompt-file (one of them)")
    return prompt if prompt is not None else _read_file(prompt_file)


def _mount_subcommands() -> None:
    for module, attr, name, help_ in (
            ("turboctx.eval.cli", "eval_app", "eval", "long-context evaluation: passkey, niah, ruler, ppl"),
            ("turboctx.bench.cli", "bench_app", "bench", "benchmarks: prefill, decode, serve"),
            ("turboctx.server.cli", "serve_app", None, None),
            ("turboctx.calibrate_cli", "calibrate_app", None, None)):
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


_mount_subcommands()


def main() -> None:
    try:
        app()
    except TurboctxError as e:
        typer.echo(f"error: {e}", err=True)
        raise SystemExit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise SystemExit(130)


if __name__ == "__main__":
    main()
