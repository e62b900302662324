"""Structured output and tool calls: grammars that constrain sampling, and tool-call parsing.

    info = TokenizerInfo.for_tokenizer(tokenizer)                 # once per model
    compiled = compile_grammar(StructuredOutputsParams(json=schema), info)   # cached per spec
    matcher = GrammarMatcher(compiled)                            # per request
    logits = matcher.apply(logits); matcher.accept(token); matcher.is_terminated()

Tools: `tool_parser(name_or_None, chat_template)` parses model text into OpenAI `tool_calls`
(`.parse(text)`, `.streaming()` for deltas); `tool_call_spec(tools, tool_choice, parser)` is the
structured-output spec that forces a well-formed call; `hermes_tool_chat_template()` renders
tools for models whose own chat template has none.
"""
from turboctx.structured.backend import CompiledGrammar, TokenizerInfo, compile_grammar
from turboctx.structured.matcher import (GrammarMatcher, TokenRejectedError, allocate_bitmask,
                                         apply_bitmask, unpack_bitmask)
from turboctx.structured.params import StructuredOutputsParams, from_response_format
from turboctx.structured.templates import hermes_tool_chat_template, template_supports_tools
from turboctx.structured.tool_grammar import tool_call_spec
from turboctx.structured.tool_parsers import (TOOL_PARSERS, ParsedToolCalls, ToolParser,
                                              tool_parser)
from turboctx.structured.tool_streaming import DeltaMessage, StreamingToolParser

__all__ = [
    "StructuredOutputsParams", "from_response_format", "TokenizerInfo", "CompiledGrammar",
    "compile_grammar", "GrammarMatcher", "TokenRejectedError", "allocate_bitmask",
    "apply_bitmask", "unpack_bitmask", "TOOL_PARSERS", "ToolParser", "ParsedToolCalls",
    "tool_parser", "StreamingToolParser", "DeltaMessage", "tool_call_spec",
    "hermes_tool_chat_template", "template_supports_tools",
]
