"""The attention options every model-running command shares (generate, ask, chat, serve, bench):
one definition of each flag, and the engine keyword arguments they turn into; and the parsing of
option text (sizes, depths) into usage errors that name the option."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Attention = Annotated[str, typer.Option(help="dense | sparse | auto: vertical-slash prefill for prompt "
                                             "rows from --sparse-threshold on (auto: on GPUs only)")]
SparseThreshold = Annotated[Optional[int], typer.Option(help="tokens; sparse prefill from this length on (default 32768)")]
SparseConfigFile = Annotated[Optional[Path], typer.Option("--sparse-config", help="per-head sparse budgets (sparse_attention_config.json, e.g. from `turboctx calibrate`); default: the file beside HF weights, else 1000 vertical / 6096 slash")]
SparseDenseTail = Annotated[Optional[int], typer.Option(min=0, help="tokens at the prompt's end that attend densely under sparse prefill (default 512; 0: none)")]
Dca = Annotated[Optional[bool], typer.Option("--dca/--no-dca", help="Dual Chunk Attention: prompts past the trained length (default: as the model's config says)")]


def attention_flags(dca: bool | None = None, sparse_threshold: int | None = None,
                    sparse_config: Path | str | None = None,
                    sparse_dense_tail: int | None = None) -> dict:
    """The engine options of the flags given (None: left to the engine's default)."""
    given = {"dca": dca, "sparse_threshold": sparse_threshold,
             "sparse_config": None if sparse_config is None else str(sparse_config),
             "sparse_dense_tail": sparse_dense_tail}
    return {k: v for k, v in given.items() if v is not None}


def parse_option(option: str, parse, *args):
    """parse(*args) for an option's text; a ValueError becomes a usage error naming the option
    (exit 2 with the message, not a traceback)."""
    try:
        return parse(*args)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint=option) from None


def option_sizes(text: str, option: str = "--lengths") -> list[int]:
    """'4k,16k' -> [4096, 16384] from an option; bad or empty text is a usage error."""
    from turboctx.eval.common import parse_sizes   # here: the turboctx.eval package is not light
    sizes = parse_option(option, parse_sizes, text)
    if not sizes:
        raise typer.BadParameter(f"no length in {text!r} (use e.g. 4k,16k)", param_hint=option)
    return sizes
