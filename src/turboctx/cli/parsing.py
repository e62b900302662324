"""Option text (sizes, depths) into usage errors that name the option: exit 2 with the message,
not a traceback."""
from __future__ import annotations

import typer


def parse_option(option: str, parse, *args):
    """parse(*args) for an option's text; a ValueError becomes a usage error naming the option."""
    try:
        return parse(*args)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint=option) from None


def option_sizes(text: str, option: str = "--lengths") -> list[int]:
    """'4k,16k' -> [4096, 16384] from an option; bad or empty text is a usage error."""
    from turboctx.eval.common import parse_sizes
    sizes = parse_option(option, parse_sizes, text)
    if not sizes:
        raise typer.BadParameter(f"no length in {text!r} (use e.g. 4k,16k)", param_hint=option)
    return sizes
