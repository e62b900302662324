"""OpenAI `tools` + `tool_choice` -> the structured-output spec that forces a well-formed call.

`tool_choice`: "none" (no tools offered) and "auto" (the model decides; its text is parsed
afterwards) need no grammar: None. "required" forces one or more calls of any offered tool (one
if `parallel_tool_calls` is False); `{"type": "function", "function": {"name": X}}` forces exactly
one call of X. The grammar writes the call as the chat template renders past calls:

- hermes:      `<tool_call>\\n{"name": "X", "arguments": <X's parameters>}\\n</tool_call>`, calls
  separated by "\\n";
- llama3_json: `{"name": "X", "parameters": <X's parameters>}`, calls separated by "; ".

It is a Lark grammar (llguidance's `%json` embeds each tool's parameters schema), so the spec is
`StructuredOutputsParams(grammar=...)`. Arguments are written with `", "` and `": "` and no
other whitespace, as json.dumps and the templates' `tojson` write them.
"""
from __future__ import annotations

import copy
import json

from turboctx.errors import InvalidRequestError
from turboctx.structured.params import StructuredOutputsParams
from turboctx.structured.tool_calls import HERMES_END, HERMES_START

TOOL_CHOICES = ("none", "auto", "required", '{"type": "function", "function": {"name": ...}}')
_FORMATS = {  # parser -> (text before the arguments, after them, between calls); {name} = JSON name
    "hermes": (HERMES_START + '\n{{"name": {name}, "arguments": ', "}\n" + HERMES_END, "\n"),
    "llama3_json": ('{{"name": {name}, "parameters": ', "}", "; "),
}
_COMPACT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def tool_call_spec(tools: list[dict] | None, tool_choice: str | dict | None = None,
                   parser: str = "hermes", parallel_tool_calls: bool = True
                   ) -> StructuredOutputsParams | None:
    """The spec that forces the call(s) `tool_choice` asks for, or None when nothing is forced.
    `tool_choice` None means OpenAI's default: "auto" with tools, "none" without."""
    tools = list(tools or [])
    functions = _functions(tools)
    if tool_choice is None:
        tool_choice = "auto" if tools else "none"
    if tool_choice in ("none", "auto"):
        return None
    if tool_choice == "required":
        if not functions:
            raise InvalidRequestError('tool_choice "required" needs at least one tool in `tools`')
        chosen, many = list(functions), parallel_tool_calls
    elif isinstance(tool_choice, dict):
        name = _named_choice(tool_choice)
        if name not in functions:
            offered = ", ".join(functions) or "none"
            raise InvalidRequestError(
                f"tool_choice names function {name!r}, which is not in `tools` (offered: {offered})")
        chosen, many = [name], False
    else:
        raise InvalidRequestError(f"tool_choice={tool_choice!r} is not supported; use one of "
                                  f"{', '.join(TOOL_CHOICES)}")
    if parser not in _FORMATS:
        raise InvalidRequestError(
            f"tool call parser {parser!r} is not known; choose one of {', '.join(_FORMATS)}")
    return StructuredOutputsParams(grammar=_lark(parser, [(n, functions[n]) for n in chosen], many))


def _lark(parser: str, functions: list[tuple[str, dict]], many: bool) -> str:
    before, after, between = _FORMATS[parser]
    rules = ["start: call (" + json.dumps(between) + " call)*" if many else "start: call",
             "call: " + " | ".join(f"call_{i}" for i in range(len(functions)))]
    for i, (name, schema) in enumerate(functions):
        head = before.format(name=json.dumps(name, ensure_ascii=False))
        rules.append(f"call_{i}: {json.dumps(head, ensure_ascii=False)} args_{i} "
                     f"{json.dumps(after, ensure_ascii=False)}")
        rules.append(f"args_{i}: %json {json.dumps(schema, ensure_ascii=False)}")
    return "\n".join(rules) + "\n"


def _functions(tools: list) -> dict[str, dict]:
    """OpenAI tools -> {name: parameters schema (an object schema, compact JSON)}."""
    out: dict[str, dict] = {}
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" \
                or not isinstance(tool.get("function"), dict):
            raise InvalidRequestError(
                f'tools[{i}] must be {{"type": "function", "function": {{"name": ..., '
                f'"parameters": {{...}}}}}}; got {json.dumps(tool, default=str)[:120]}')
        fn = tool["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequestError(f"tools[{i}].function.name must be a non-empty string")
        if name in out:
            raise InvalidRequestError(f"tools[{i}]: function name {name!r} appears twice")
        params = fn.get("parameters")
        if params is None:
            params = {"type": "object", "properties": {}}
        if not isinstance(params, dict):
            raise InvalidRequestError(
                f"tools[{i}].function.parameters must be a JSON schema object, got {type(params).__name__}")
        params = copy.deepcopy(params)
        params.setdefault("type", "object")
        params["x-guidance"] = {**_COMPACT, **params.get("x-guidance", {})}
        out[name] = params
    return out


def _named_choice(tool_choice: dict) -> str:
    fn = tool_choice.get("function")
    if tool_choice.get("type") != "function" or not isinstance(fn, dict) \
            or not isinstance(fn.get("name"), str):
        raise InvalidRequestError(
            f"tool_choice={json.dumps(tool_choice, default=str)[:120]} is not supported; use one of "
            f"{', '.join(TOOL_CHOICES)}")
    return fn["name"]
