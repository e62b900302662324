"""`turboctx info`: the model, its attention setup and the memory plan, without loading weights."""
from __future__ import annotations

import json
from typing import Annotated

import typer

from turboctx.cli import app
from turboctx.cli.engine_options import engine_options


@app.command()
@engine_options()
def info(as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
         *, options: dict):
    """Model, dtype, device and memory plan (weights, KV bytes per token, tokens that fit)."""
    from turboctx.config import EngineConfig
    from turboctx.engine.plan import memory_plan
    plan = memory_plan(EngineConfig.from_options(**options))
    if as_json:
        print(json.dumps(plan, indent=2))
        return
    for k, v in plan.items():
        typer.echo(f"{k:>28}: {v}")
