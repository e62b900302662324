"""`turboctx generate`: continue a prompt; and what `ask` and `chat` (ask.py, chat.py) share with it:
loading the model, sampling parameters, the JSON form of an output."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from turboctx.cli import app
from turboctx.cli.engine_options import engine_options
from turboctx.errors import TurboctxError

MaxTokens = Annotated[int, typer.Option(help="tokens to generate")]
Temperature = Annotated[float, typer.Option(help="0 = greedy")]
AsJson = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def load_llm(options: dict):
    from turboctx import LLM
    return LLM(**options)


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


def _params(max_tokens, temperature, logprobs=None):
    """Sampling draws from the engine's generator, seeded by --seed."""
    from turboctx import SamplingParams
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, logprobs=logprobs)


@app.command()
@engine_options()
def generate(prompt: Annotated[Optional[str], typer.Argument(help="the prompt text")] = None,
             prompt_file: Annotated[Optional[Path], typer.Option(help="read the prompt from a file")] = None,
             max_tokens: MaxTokens = 64, temperature: Temperature = 0.0,
             logprobs: Annotated[Optional[int], typer.Option(help="top-k logprobs per token (with --json)")] = None,
             as_json: AsJson = False, *, options: dict):
    """Continue a prompt (no chat template)."""
    text = _read_prompt(prompt, prompt_file)
    params = _params(max_tokens, temperature, logprobs)
    with load_llm(options) as llm:
        _stream_print(llm, text, params, chat=False, as_json=as_json)


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
