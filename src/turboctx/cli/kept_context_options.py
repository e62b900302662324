"""`ask/chat --keep-context NAME`: load the documents' KV when they were kept before, keep it
after the first answer when they were not (engine/kept_contexts.py)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

KeepContext = Annotated[Optional[str], typer.Option(
    "--keep-context", metavar="NAME",
    help="keep the documents' KV under NAME (host RAM and disk, `turboctx context list`); a later "
         "ask/chat with the same documents, model and setup loads it instead of prefilling")]


def load_kept(llm, name: str | None, prefix_ids: list[int]):
    """Loads context `name` when it is kept and valid for these documents; says what happened on
    stderr (why a kept copy was discarded comes as a logged warning). Returns the LoadResult
    (None: nothing kept under that name)."""
    if name is None:
        return None
    from turboctx.contexts.store import check_name
    check_name(name)
    from turboctx.errors import TurboctxError
    try:
        res = llm.load_context(name, prefix_ids)    # its warnings are logged (stderr) as they happen
    except TurboctxError as e:                      # e.g. no room in the cache: prefill instead
        typer.echo(f"warning: context {name!r} not loaded: {e}; the documents are prefilled", err=True)
        return None
    if res is not None and res.num_tokens:
        where = "already in the prefix cache" if res.tier == "gpu" else \
            f"loaded from {res.tier} in {res.seconds:.2f} s ({res.gb_per_s:.1f} GB/s)"
        typer.echo(f"[context {name!r}: {res.num_tokens:,} tokens {where}]", err=True)
    elif res is None:
        typer.echo(f"[context {name!r} is not kept yet: the documents are prefilled and kept after "
                   f"the answer]", err=True)
    return res


def keep_after(llm, name: str | None, prefix_ids: list[int], loaded) -> dict | None:
    """Keeps the documents' KV as `name` unless it was just loaded whole; says so on stderr. A
    failure to keep (disk full) is a warning: the answer is already given."""
    if name is None:
        return None
    if loaded is not None and loaded.num_tokens:
        return {"name": name, "loaded_from": loaded.tier, "load_s": round(loaded.seconds, 3),
                "tokens": loaded.num_tokens}
    from turboctx.errors import TurboctxError
    try:
        kept = llm.keep_context(name, prefix_ids)
    except TurboctxError as e:
        typer.echo(f"warning: context {name!r} not kept: {e}", err=True)
        return {"name": name, "kept": False, "error": str(e)}
    where = " and ".join(kept.tiers) or "nowhere"              # kept.warnings are logged already
    typer.echo(f"[context {name!r} kept: {kept.num_tokens:,} tokens, {kept.nbytes / 2**30:.2f} GiB "
               f"in {where} ({kept.seconds:.2f} s)]", err=True)
    return {"name": name, "kept": bool(kept.tiers), "tiers": kept.tiers, "tokens": kept.num_tokens,
            "keep_s": round(kept.seconds, 3)}
