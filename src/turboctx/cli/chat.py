"""`turboctx chat [--file F --dir D]`: a conversation on the terminal, about documents if given
(they open the first user message and stay the conversation's prefix)."""
from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from turboctx.cli import app, generate
from turboctx.cli.document_options import (Directories, DryRun, Files, Price, Verbose, footer,
                                           prepare_documents, show_plan, show_progress)
from turboctx.cli.engine_options import engine_options
from turboctx.cli.generate import MaxTokens, Temperature
from turboctx.cli.kept_context_options import KeepContext, keep_after, load_kept
from turboctx.errors import TurboctxError


@app.command()
@engine_options()
def chat(max_tokens: MaxTokens = 512, temperature: Temperature = 0.7,
         system: Annotated[Optional[str], typer.Option(help="system prompt")] = None,
         file: Files = None, directory: Directories = None, dry_run: DryRun = False,
         verbose: Verbose = False, price_per_gpu_hour: Price = None,
         keep_context: KeepContext = None, *, options: dict):
    """Interactive chat on the terminal (/exit or Ctrl-D to leave, /reset to clear the
    conversation; documents stay). With --file / --dir the documents open the first message;
    --keep-context NAME keeps their KV for a later chat or ask."""
    from turboctx.documents import DocumentError
    if keep_context is not None:
        from turboctx.contexts.store import check_name
        check_name(keep_context)                 # before any file is read or weight loaded
    if any(str(f) == "-" for f in file or []):
        raise DocumentError("chat reads the conversation from stdin, so it cannot read a document "
                            "there (--file -); save the document to a file and give its path")
    prepared = prepare_documents(file, directory, options, None, max_tokens, price_per_gpu_hour,
                                 system=system)
    if prepared is not None:
        show_plan(prepared, dry_run, verbose, as_json=False)
    elif dry_run:
        raise DocumentError("--dry-run plans documents; give them with --file or --dir")
    elif keep_context is not None:
        raise DocumentError("--keep-context keeps the documents' KV; give them with --file or --dir")
    if dry_run:
        return
    params = generate._params(max_tokens, temperature)
    gpus = prepared.plan.gpus if prepared else options.get("tensor_parallel_size", 1)
    with generate.load_llm(options) as llm:
        loaded = load_kept(llm, keep_context, prepared.prompt.prefix_ids) if prepared else None
        chat_loop(llm, params, system, prepared, price_per_gpu_hour, gpus, keep_context, loaded)


def turn_prompt(llm, history: list[dict], system: str | None, prepared) -> str | list[int]:
    """The prompt of the next turn: token ids starting with the documents' prefix_ids, or the
    chat template's text when there are no documents."""
    if prepared is None:
        return llm.chat_prompt(([{"role": "system", "content": system}] if system else []) + history)
    from turboctx.documents import conversation_ids
    return conversation_ids(prepared.tokenizer, prepared.prompt, history)


def chat_loop(llm, params, system: str | None, prepared=None, price_per_gpu_hour: float | None = None,
              gpus: int = 1, keep_context: str | None = None, loaded=None) -> None:
    """Reads lines from stdin until /exit or end of input; each answer streams to stdout and its
    footer (TTFT, tokens, cost) goes to stderr. keep_context: the documents' KV is kept after the
    first answer (unless `loaded`, the kept context loaded at start, had it)."""
    pending_keep, loaded_at_start = keep_context is not None, loaded
    history: list[dict] = []
    typer.echo("chat: /exit to leave, /reset to clear the conversation"
               + (" (the documents stay)" if prepared else ""), err=True)
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            typer.echo("", err=True)
            return
        if line.strip() in ("/exit", "/quit"):
            return
        if line.strip() == "/reset":
            history = []
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        try:
            prompt = turn_prompt(llm, history, system, prepared)
            reply, last = "", None
            progress = isinstance(prompt, list) and show_progress(len(prompt))
            for last in llm.stream(prompt, params, chat=True, use_tqdm=progress or None):
                sys.stdout.write(last.text[len(reply):])
                sys.stdout.flush()
                reply = last.text
            sys.stdout.write("\n")
            history.append({"role": "assistant", "content": reply})
            typer.echo(footer(last, price_per_gpu_hour, gpus, loaded), err=True)
            loaded = None                     # its load time counts in the first turn only
            if pending_keep:
                keep_after(llm, keep_context, prepared.prompt.prefix_ids, loaded_at_start)
                pending_keep = False
        except TurboctxError as e:
            history.pop()
            typer.echo(f"error: {e}", err=True)
