"""What `ask` and `chat` share: the document options, reading them into a prompt and a plan
before any weight is loaded, and the footer after an answer."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

Files = Annotated[Optional[list[Path]], typer.Option(
    "--file", "-f", metavar="PATH", help="a document: a text file, a PDF (.pdf) or - for stdin; repeatable")]
Directories = Annotated[Optional[list[Path]], typer.Option(
    "--dir", metavar="DIR", help="a code repository: its text files (honouring .gitignore); repeatable")]
DryRun = Annotated[bool, typer.Option(
    "--dry-run", help="print the plan (tokens, fit, estimated TTFT and cost) and exit, loading no weights")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="the plan lists every file skipped")]
Price = Annotated[Optional[float], typer.Option(
    min=0, metavar="USD", help="USD per GPU-hour: the plan and the footer show the cost")]

PROGRESS_MIN_PROMPT_TOKENS = 2048   # on a terminal, a prefill of this many tokens shows a progress bar


@dataclass
class PreparedDocuments:
    tokenizer: object
    prompt: object          # turboctx.documents.DocumentPrompt
    plan: object            # turboctx.documents.plan.DocumentPlan


def prepare_documents(files: list[Path] | None, directories: list[Path] | None, options: dict,
                      question: str | None, max_tokens: int, price_per_gpu_hour: float | None,
                      system: str | None = None) -> PreparedDocuments | None:
    """Reads the inputs, builds the prompt (tokenizer only) and its plan (config only). None when
    no document is given. question None: a chat, whose first question is not known yet."""
    from turboctx.documents import build_document_prompt, read_inputs
    from turboctx.documents.plan import make_plan
    if not files and not directories:
        return None
    found = read_inputs([str(f) for f in files or []], directories or [])
    from turboctx.config import EngineConfig
    from turboctx.weights import open_checkpoint
    config = EngineConfig.from_options(**options)
    checkpoint = open_checkpoint(config.model.model)
    prompt = build_document_prompt(checkpoint.tokenizer, found.documents, question or "", system=system)
    plan = make_plan(config, checkpoint.config, prompt, [d.kind for d in found.documents],
                     found.skipped, max_tokens, price_per_gpu_hour, question_known=question is not None)
    return PreparedDocuments(checkpoint.tokenizer, prompt, plan)


def show_plan(prepared: PreparedDocuments, dry_run: bool, verbose: bool, as_json: bool) -> None:
    """--dry-run: the whole plan on stdout (JSON with --json); otherwise its short form on stderr.
    Raises DocumentsTooLongError (exit 1) when the documents do not fit."""
    from turboctx.documents import DocumentsTooLongError
    from turboctx.documents.plan_text import plan_dict, plan_lines, short_plan_lines
    plan = prepared.plan
    if dry_run and as_json:
        print(json.dumps({"plan": plan_dict(plan)}, indent=1))
    elif dry_run:
        print("\n".join(plan_lines(plan, verbose)))
    else:
        typer.echo("\n".join(short_plan_lines(plan)), err=True)
    if not plan.fit.fits:
        raise DocumentsTooLongError(plan.fit.message())


def show_progress(prompt_tokens: int) -> bool:
    return sys.stderr.isatty() and prompt_tokens >= PROGRESS_MIN_PROMPT_TOKENS


def footer(out, price_per_gpu_hour: float | None, gpus: int, loaded=None) -> str:
    """'[TTFT 1.20 s, 812 prompt tokens (512 from the cache), 8 generated, 14.2 tok/s, ...]'.
    loaded: the kept context loaded before the request (its load time is added to the TTFT)."""
    m = out.metrics
    load_s = loaded.seconds if loaded is not None and loaded.num_tokens else 0.0
    parts = [(f"TTFT {m.ttft_s + load_s:.2f} s" + (f" ({load_s:.2f} s loading the kept context)"
                                                   if load_s else ""))
             if m.ttft_s is not None else "TTFT -",
             f"{m.num_prompt_tokens:,} prompt tokens"
             + (f" ({m.num_cached_tokens:,} from the cache)" if m.num_cached_tokens else ""),
             f"{m.num_generated_tokens:,} generated"]
    if m.decode_tokens_per_s:
        parts.append(f"{m.decode_tokens_per_s:.1f} tok/s")
    parts.append(f"finish: {out.finish_reason}")
    cost = request_cost(out, price_per_gpu_hour, gpus)
    if cost is not None:
        parts.append(f"cost ${cost:.4f} ({m.e2e_s:.1f} s at ${price_per_gpu_hour:.2f}/GPU-hour"
                     + (f" x {gpus} GPUs" if gpus > 1 else "") + ")")
    return "[" + ", ".join(parts) + "]"


def request_cost(out, price_per_gpu_hour: float | None, gpus: int) -> float | None:
    """The request's wall time (arrival to last token) x price per GPU-hour x GPUs."""
    if price_per_gpu_hour is None or out.metrics.e2e_s is None:
        return None
    return out.metrics.e2e_s / 3600 * price_per_gpu_hour * gpus


def stream_answer(llm, prompt_ids: list[int], params) -> object:
    """Streams the answer to stdout; returns the last RequestOutput."""
    last, printed = None, 0
    for out in llm.stream(prompt_ids, params, chat=True, use_tqdm=show_progress(len(prompt_ids))):
        last = out
        sys.stdout.write(out.text[printed:])
        sys.stdout.flush()
        printed = len(out.text)
    sys.stdout.write("\n")
    return last
