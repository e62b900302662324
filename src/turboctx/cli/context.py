"""`turboctx context list | rm`: the kept contexts in host RAM and on disk."""
from __future__ import annotations

import json
import time
from typing import Annotated, Optional

import typer

from turboctx.errors import TurboctxError

context_app = typer.Typer(no_args_is_help=True, add_completion=False,
                          help="kept contexts (ask/chat --keep-context): list, rm")


def _store():
    from turboctx.contexts.store import ContextStore
    return ContextStore()


@context_app.command("list")
def list_contexts(as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False):
    """Every kept context: tokens, size, where it is kept (ram, disk), model, last use."""
    store = _store()
    rows = store.list()
    if as_json:
        print(json.dumps({"tiers": {t.name: {"path": str(t.root), "limit_bytes": t.limit_bytes,
                                             "used_bytes": t.used_bytes()} for t in store.tiers},
                          "contexts": rows}, indent=2))
        return
    for t in store.tiers:
        typer.echo(f"{t.name}: {t.root} ({t.used_bytes() / 2**30:.2f} of {t.limit_bytes / 2**30:.1f} GiB)",
                   err=True)
    if not rows:
        typer.echo("no kept contexts", err=True)
        return
    typer.echo(f"{'name':<24} {'tokens':>9} {'GiB':>8}  {'kept in':<9} {'last used':<17} model")
    for r in rows:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["last_used"])) if r["last_used"] else "-"
        tokens = r["num_tokens"] if r["num_tokens"] is not None else "unreadable"
        typer.echo(f"{r['name']:<24} {tokens:>9} {r['bytes'] / 2**30:>8.3f}  {','.join(r['tiers']):<9} "
                   f"{used:<17} {r['model'] or '-'}")


@context_app.command("rm")
def remove_contexts(names: Annotated[Optional[list[str]], typer.Argument(help="contexts to remove")] = None,
                    all_: Annotated[bool, typer.Option("--all", help="remove every kept context")] = False):
    """Removes kept contexts from host RAM and disk."""
    store = _store()
    if all_ == bool(names):
        raise TurboctxError("give the names of the contexts to remove, or --all (one of them)")
    targets = [r["name"] for r in store.list()] if all_ else names
    missing = [n for n in targets if not store.remove(n)]
    for n in targets:
        if n not in missing:
            typer.echo(f"removed {n}", err=True)
    if missing:
        known = ", ".join(r["name"] for r in store.list()) or "none"
        raise TurboctxError(f"no kept context named {', '.join(map(repr, missing))} (kept: {known})")
