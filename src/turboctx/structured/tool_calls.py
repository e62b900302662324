"""What both tool-call parsers (whole text and streaming) share: the markup, the OpenAI
`tool_calls` entry, and the test of a JSON object being a well-formed call."""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Callable, Protocol

from turboctx.structured.json_spans import ObjectScan


class CallFormat(Protocol):
    """What a streaming parser needs from its parser: the arguments keys (preferred first) and
    how to make call ids."""

    args_keys: tuple[str, ...]
    id_factory: Callable[[], str]


HERMES_START, HERMES_END = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
HERMES_BLOCK = re.compile(re.escape(HERMES_START) + r"(.*?)(?:" + re.escape(HERMES_END) + r"|\Z)",
                           re.DOTALL)


def make_tool_call_id() -> str:
    """An OpenAI-style tool call id: call_ + 24 hex digits."""
    return "call_" + uuid.uuid4().hex[:24]


def tool_call(name: str, arguments: str, call_id: str | None = None) -> dict:
    """One entry of OpenAI `tool_calls`."""
    return {"id": call_id or make_tool_call_id(), "type": "function",
            "function": {"name": name, "arguments": arguments}}


@dataclass
class ParsedToolCalls:
    """`tool_calls`: OpenAI's list of {id, type: "function", function: {name, arguments}};
    `content`: the text outside them (None if only whitespace)."""

    content: str | None
    tool_calls: list[dict] = field(default_factory=list)


def finish_content(text: str) -> str | None:
    text = text.strip()
    return text or None


def call_from_object(text: str, scan: ObjectScan, args_keys: tuple[str, ...]) -> tuple[str, str] | None:
    """A closed object scan -> (name, arguments text), or None if it is not a well-formed call:
    `name` a string, the first present of `args_keys` an object (absent: "{}")."""
    if not scan.ok or scan.end is None:
        return None
    raw_name = scan.value(text, "name")
    if raw_name is None:
        return None
    try:
        name = json.loads(raw_name)
    except ValueError:
        return None
    if not isinstance(name, str) or not name:
        return None
    key = next((k for k in args_keys if k in scan.members), None)
    if key is None:
        return name, "{}"
    raw_args = scan.value(text, key)
    try:
        args = json.loads(raw_args)
    except ValueError:
        return None
    if not isinstance(args, dict):
        return None
    return name, raw_args
