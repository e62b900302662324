"""The attention options every model-running command shares (generate, ask, chat, serve, bench):
one definition of each flag, and the engine keyword arguments they turn into."""
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
