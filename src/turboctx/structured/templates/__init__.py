"""Chat templates shipped with turboctx (jinja, rendered by Tokenizer.apply_chat_template).

`hermes_tool.jinja`: ChatML with tools in Qwen2.5's Hermes form, for models whose own template
renders no tools (SmolLM2's). Use it as
    tokenizer.apply_chat_template(messages, tools=tools, chat_template=hermes_tool_chat_template())
and parse the answer with tool_parser("hermes").
"""
from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

_USES_TOOLS = re.compile(r"\btools\b")


@lru_cache(maxsize=1)
def hermes_tool_chat_template() -> str:
    """The text of templates/hermes_tool.jinja."""
    return resources.files(__package__).joinpath("hermes_tool.jinja").read_text(encoding="utf-8")


def template_supports_tools(chat_template: str | None) -> bool:
    """Whether a chat template reads the `tools` variable (else tools never reach the prompt)."""
    return bool(chat_template) and _USES_TOOLS.search(chat_template) is not None
