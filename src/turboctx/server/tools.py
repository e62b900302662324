"""Tools and structured output on the chat endpoint: which grammar constrains a request
(response_format, vLLM's structured_outputs, or a forced tool call) and how its text becomes
OpenAI `tool_calls`, whole or streamed (turboctx.structured does the work)."""
from __future__ import annotations

from dataclasses import dataclass

from turboctx.errors import InvalidRequestError
from turboctx.server.errors import APIError
from turboctx.server.protocol import ChatCompletionRequest, _SamplingFields
from turboctx.server.responses import (DeltaMessage, FunctionCallDelta, FunctionCallOut,
                                       ToolCallDelta, ToolCallOut)
from turboctx.server.serving_common import ServerState
from turboctx.structured import (StructuredOutputsParams, ToolParser, from_response_format,
                                 tool_call_spec, tool_parser)


@dataclass
class ToolPlan:
    """parser: turns the output into tool calls (None: no tools, or tool_choice "none");
    spec: the grammar that forces a call (tool_choice "required" or a named function)."""
    parser: ToolParser | None = None
    spec: StructuredOutputsParams | None = None


def tool_plan(state: ServerState, body: ChatCompletionRequest) -> ToolPlan:
    if not body.tools:
        if body.tool_choice not in (None, "none"):
            raise APIError(f"tool_choice={_choice_text(body.tool_choice)} needs `tools`", 400,
                           param="tool_choice")
        return ToolPlan()
    if body.tool_choice == "none":
        return ToolPlan()
    choice = body.tool_choice if isinstance(body.tool_choice, str) or body.tool_choice is None \
        else body.tool_choice.model_dump()
    try:
        parser = tool_parser(state.tool_call_parser, state.chat_template_text())
        spec = tool_call_spec([t.model_dump(exclude_none=True) for t in body.tools], choice,
                              parser.name, parallel_tool_calls=body.parallel_tool_calls is not False)
    except InvalidRequestError as e:
        raise APIError(str(e), 400, param="tool_choice") from None
    return ToolPlan(parser, spec)


def _choice_text(choice) -> str:
    return repr(choice) if isinstance(choice, str) else f"function {choice.function.name!r}"


def structured_spec(state: ServerState, body: _SamplingFields, plan: ToolPlan | None = None
                    ) -> StructuredOutputsParams | None:
    """The one grammar a request asks for: response_format (chat), structured_outputs (vLLM's
    field, both endpoints) or a forced tool call; asking for two is a 400, and so is one that
    does not compile (the error names the field)."""
    asked: list[tuple[str, StructuredOutputsParams]] = []
    try:
        rf = getattr(body, "response_format", None)
        if rf is not None:
            spec = from_response_format(rf.model_dump(by_alias=True, exclude_none=True))
            if spec is not None:
                asked.append(("response_format", spec))
        if body.structured_outputs is not None:
            asked.append(("structured_outputs", StructuredOutputsParams(**body.structured_outputs)))
    except InvalidRequestError as e:
        raise APIError(str(e), 400, param="response_format" if not asked else "structured_outputs") from None
    except TypeError as e:      # a key StructuredOutputsParams does not have
        raise APIError(f"structured_outputs: {e}; allowed keys: json, json_object, regex, choice, "
                       f"grammar, disable_any_whitespace, whitespace_pattern", 400,
                       param="structured_outputs") from None
    if plan is not None and plan.spec is not None:
        asked.append(("tool_choice", plan.spec))
    if len(asked) > 1:
        names = " and ".join(name for name, _ in asked)
        raise APIError(f"{names} each constrain the output; give one", 400, param=asked[1][0])
    if not asked:
        return None
    name, spec = asked[0]
    try:
        state.engine.compile_grammar(spec)          # cached: the request's matcher reuses it
    except InvalidRequestError as e:
        raise APIError(str(e), 400, param=name) from None
    return spec


def tool_calls_out(calls: list[dict]) -> list[ToolCallOut]:
    return [ToolCallOut(id=c["id"], function=FunctionCallOut(**c["function"])) for c in calls]


def delta_out(d) -> DeltaMessage:
    """A streaming parser's delta (turboctx.structured.DeltaMessage) in the response's shape."""
    if not d.tool_calls:
        return DeltaMessage(content=d.content)
    return DeltaMessage(tool_calls=[ToolCallDelta(
        index=c["index"], id=c.get("id"), type=c.get("type"),
        function=FunctionCallDelta(**c.get("function", {}))) for c in d.tool_calls])


def finish_reason(reason: str | None, called_tools: bool) -> str | None:
    """OpenAI: "tool_calls" when the model stopped after calling tools."""
    return "tool_calls" if called_tools and reason == "stop" else reason
