"""The engine options of every command that runs a model, made from the one option table
(turboctx.config.ENGINE_OPTIONS): flag, help text and default come from the config's fields,
never from a copy here.

    @app.command()
    @engine_options(defaults={"attention": "sparse"}, exclude=("max_model_len",))
    def calibrate(length: int = 16384, *, options: dict): ...

The command receives the options the user gave (checked and typed, plus the command's own
`defaults` for options left out) as `options`, ready for `EngineConfig.from_options(**options)`.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Iterable, Optional

import typer

from turboctx.config import ENGINE_OPTIONS, OptionSpec
from turboctx.errors import InvalidRequestError

PANEL = "Engine options"
MARK = "__turboctx_engine_options__"     # the option names a command took from the table
EXCLUDED = "__turboctx_engine_options_excluded__"   # those it sets itself or uses otherwise


def cli_help(spec: OptionSpec, default: Any = None) -> str:
    """The flag's help: the option's help and the default in force for this command."""
    shown = spec.default if default is None else default
    if shown is None or spec.type is bool and shown is False and default is None:
        return spec.help
    return f"{spec.help} [default: {str(shown).lower() if isinstance(shown, bool) else shown}]"


def _metavar(spec: OptionSpec) -> str:
    if spec.choices:
        return "|".join(spec.choices)
    return {int: "SIZE" if spec.size else "INT", float: "FLOAT"}.get(spec.type, "TEXT")


def _parameter(spec: OptionSpec, default: Any) -> inspect.Parameter:
    decls = [f"{spec.flag}/--no-{spec.flag[2:]}" if spec.type is bool else spec.flag, *spec.flags]
    info = typer.Option(None, *decls, help=cli_help(spec, default), show_default=False,
                        rich_help_panel=PANEL, **({} if spec.type is bool else {"metavar": _metavar(spec)}))
    return inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=info,
                             annotation=Optional[bool] if spec.type is bool else Optional[str])


def engine_options(*, exclude: Iterable[str] = (), defaults: dict[str, Any] | None = None):
    """Adds every engine option but `exclude` to a typer command (see the module doc). An
    excluded option is one the command sets itself (bench: the cache size) or whose flag it uses
    for its own meaning (eval: --seed is the samples' seed)."""
    exclude, defaults = set(exclude), dict(defaults or {})
    specs = [s for s in ENGINE_OPTIONS if s.name not in exclude]
    unknown = (exclude | set(defaults)) - {s.name for s in ENGINE_OPTIONS}
    assert not unknown, f"not engine options: {unknown}"

    def decorate(fn):
        sig = inspect.signature(fn, eval_str=True)
        own = [p for name, p in sig.parameters.items() if name != "options"]
        assert "options" in sig.parameters, f"{fn.__name__} needs an `options` parameter"
        clash = {p.name for p in own} & {s.name for s in specs}
        assert not clash, f"{fn.__name__} defines engine options of its own: {clash}"

        @functools.wraps(fn)
        def command(*args, **kwargs):
            given = {}
            for spec in specs:
                value = kwargs.pop(spec.name, None)
                if value is not None:
                    try:
                        given[spec.name] = spec.parse(value) if isinstance(value, str) else spec.check(value)
                    except InvalidRequestError as e:     # a usage error naming the flag
                        raise typer.BadParameter(str(e), param_hint=spec.flag) from None
                elif spec.name in defaults:
                    given[spec.name] = defaults[spec.name]
            return fn(*args, options=given, **kwargs)

        params = own + [_parameter(s, defaults.get(s.name)) for s in specs]
        # keyword-only parameters must follow the positional ones
        params.sort(key=lambda p: p.kind == inspect.Parameter.KEYWORD_ONLY)
        command.__signature__ = sig.replace(parameters=params)
        setattr(command, MARK, tuple(s.name for s in specs))
        setattr(command, EXCLUDED, tuple(sorted(exclude)))
        return command
    return decorate
