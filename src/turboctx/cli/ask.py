"""`turboctx ask QUESTION --file F --dir D`: a question about documents, planned before the work."""
from __future__ import annotations

import json
from typing import Annotated

import typer

from turboctx.cli import app, generate
from turboctx.cli.document_options import (Directories, DryRun, Files, Price, Verbose,
                                           footer, prepare_documents, show_plan, stream_answer)
from turboctx.cli.engine_options import engine_options
from turboctx.cli.generate import AsJson, MaxTokens, Temperature
from turboctx.cli.kept_context_options import KeepContext, keep_after, load_kept


@app.command()
@engine_options()
def ask(question: Annotated[str, typer.Argument(help="the question about the documents")],
        file: Files = None, directory: Directories = None,
        max_tokens: MaxTokens = 256, temperature: Temperature = 0.0,
        dry_run: DryRun = False, verbose: Verbose = False, price_per_gpu_hour: Price = None,
        keep_context: KeepContext = None, as_json: AsJson = False, *, options: dict):
    """Answer a question about whole documents: files, PDFs, stdin (--file -), code repositories
    (--dir). The plan (tokens per document, fit, estimated TTFT and cost) comes first; --dry-run
    prints only the plan. --keep-context NAME keeps the documents' KV for the next question."""
    from turboctx.documents import DocumentError
    if keep_context is not None:
        from turboctx.contexts.store import check_name
        check_name(keep_context)                 # before any file is read or weight loaded
    from turboctx.documents.inputs import NO_INPUT
    from turboctx.documents.plan_text import plan_dict
    if not question.strip():
        raise DocumentError("the question is empty; give it as the first argument")
    prepared = prepare_documents(file, directory, options, question, max_tokens, price_per_gpu_hour)
    if prepared is None:
        raise DocumentError(NO_INPUT)
    show_plan(prepared, dry_run, verbose, as_json)
    if dry_run:
        return
    plan, prompt_ids = prepared.plan, prepared.prompt.prompt_ids
    params = generate._params(max_tokens, temperature)
    prefix_ids = prepared.prompt.prefix_ids
    with generate.load_llm(options) as llm:
        loaded = load_kept(llm, keep_context, prefix_ids)
        if as_json:
            last = None
            for last in llm.stream(prompt_ids, params, chat=True, use_tqdm=False):
                pass
            context = keep_after(llm, keep_context, prefix_ids, loaded)
            print(json.dumps({**generate.output_dict(last), "plan": plan_dict(plan),
                              **({"context": context} if context else {})}))
        else:
            last = stream_answer(llm, prompt_ids, params)
            typer.echo(footer(last, price_per_gpu_hour, plan.gpus, loaded), err=True)
            keep_after(llm, keep_context, prefix_ids, loaded)
