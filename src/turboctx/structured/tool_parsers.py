"""Model text -> OpenAI `tool_calls` plus the remaining content, in the two forms models write:

- `hermes` (Qwen2.5, Hermes, our tool template): `<tool_call>\\n{"name": ..., "arguments": {...}}
  \\n</tool_call>`, possibly several, text around them is content;
- `llama3_json` (Llama 3.1+): the output is `{"name": ..., "parameters": {...}}` (optionally after
  `<|python_tag|>`, several separated by `;`); any other output is content.

The names are vLLM's `--tool-call-parser` values. A call's `arguments` is the model's own JSON
text of the arguments object (checked with json.loads), so the streaming parser
(tool_streaming.py) can send it piece by piece and end with the same string. Content is the text
outside the calls with leading and trailing whitespace removed; None when nothing is left.
A `<tool_call>` block that is not a JSON object with a string `name` and an object `arguments`
stays in the content, as written.
"""
from __future__ import annotations

from typing import Callable

from turboctx.errors import InvalidRequestError
from turboctx.structured.json_spans import scan_object, skip_ws
from turboctx.structured.tool_calls import (HERMES_BLOCK, HERMES_START, PYTHON_TAG, ParsedToolCalls,
                                            call_from_object, finish_content, make_tool_call_id,
                                            tool_call)
from turboctx.structured.tool_streaming import (HermesStreamingParser, Llama3JsonStreamingParser,
                                                StreamingToolParser)

__all__ = ["ToolParser", "HermesToolParser", "Llama3JsonToolParser", "TOOL_PARSERS",
           "ParsedToolCalls", "detect_tool_parser", "tool_parser", "make_tool_call_id"]


class ToolParser:
    """Parses one model's tool-call form. `parse` for a whole output; `streaming` for deltas."""

    name: str = ""
    args_keys: tuple[str, ...] = ()

    def __init__(self, id_factory: Callable[[], str] = make_tool_call_id):
        self.id_factory = id_factory

    def parse(self, text: str) -> ParsedToolCalls:
        raise NotImplementedError

    def streaming(self) -> StreamingToolParser:
        raise NotImplementedError


class HermesToolParser(ToolParser):
    name = "hermes"
    args_keys = ("arguments", "parameters")

    def parse(self, text: str) -> ParsedToolCalls:
        calls: list[dict] = []
        content: list[str] = []
        pos = 0
        for block in HERMES_BLOCK.finditer(text):
            content.append(text[pos:block.start()])
            pos = block.end()
            body = block.group(1)
            scan = scan_object(body)
            call = call_from_object(body, scan, self.args_keys)
            if call is None or skip_ws(body, scan.end) != len(body):
                content.append(block.group(0))       # not a call: the text stays as written
                continue
            calls.append(tool_call(*call, self.id_factory()))
        content.append(text[pos:])
        return ParsedToolCalls(finish_content("".join(content)), calls)

    def streaming(self) -> StreamingToolParser:
        return HermesStreamingParser(self)


class Llama3JsonToolParser(ToolParser):
    name = "llama3_json"
    args_keys = ("parameters", "arguments")

    def parse(self, text: str) -> ParsedToolCalls:
        i = skip_ws(text, 0)
        if text.startswith(PYTHON_TAG, i):
            i += len(PYTHON_TAG)
        calls: list[dict] = []
        while True:
            j = skip_ws(text, i)
            if calls:
                while j < len(text) and text[j] == ";":
                    j = skip_ws(text, j + 1)
            if j == len(text):
                return ParsedToolCalls(None, calls)
            scan = scan_object(text, j)
            call = call_from_object(text, scan, self.args_keys)
            if call is None:
                rest = text if not calls else text[i:]
                return ParsedToolCalls(finish_content(rest), calls)
            calls.append(tool_call(*call, self.id_factory()))
            i = scan.end

    def streaming(self) -> StreamingToolParser:
        return Llama3JsonStreamingParser(self)


TOOL_PARSERS: dict[str, type[ToolParser]] = {"hermes": HermesToolParser,
                                             "llama3_json": Llama3JsonToolParser}


def detect_tool_parser(chat_template: str | None) -> str | None:
    """The parser a chat template's tool-call form needs, or None if it renders no tools:
    `<tool_call>` -> hermes; `<|python_tag|>` or a `"parameters"` key -> llama3_json."""
    if not chat_template:
        return None
    if HERMES_START in chat_template:
        return "hermes"
    if PYTHON_TAG in chat_template or '"parameters"' in chat_template:
        return "llama3_json"
    return None


def tool_parser(name: str | None = None, chat_template: str | None = None,
                id_factory: Callable[[], str] = make_tool_call_id) -> ToolParser:
    """The parser named (`hermes`, `llama3_json`), else the one the chat template implies, else
    hermes (the form of our own tool template, templates/hermes_tool.jinja)."""
    if name is None:
        name = detect_tool_parser(chat_template) or "hermes"
    cls = TOOL_PARSERS.get(name)
    if cls is None:
        raise InvalidRequestError(
            f"tool call parser {name!r} is not known; choose one of {', '.join(TOOL_PARSERS)}")
    return cls(id_factory)
