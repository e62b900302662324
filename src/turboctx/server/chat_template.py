"""Chat messages (OpenAI's shape) -> the prompt text, through the model's chat template (or the
server's --chat-template): for /v1/chat/completions and /tokenize alike."""
from __future__ import annotations

import json

from turboctx.server.errors import APIError
from turboctx.server.protocol import ChatMessage, ToolDefinition
from turboctx.server.serving_common import ServerState, require_tokenizer
from turboctx.structured import template_supports_tools

RESERVED_TEMPLATE_VARIABLES = ("messages", "add_generation_prompt", "tools", "chat_template")


def template_messages(messages: list[ChatMessage]) -> list[dict]:
    """What chat templates expect: role, content as text, and for assistant tool calls the
    arguments as an object (templates such as Qwen2.5's write them with `tojson`)."""
    out = []
    for i, m in enumerate(messages):
        content = m.content
        if isinstance(content, list):
            content = "".join(p.text for p in content)
        d = {"role": "system" if m.role == "developer" else m.role, "content": content or ""}
        if m.name is not None:
            d["name"] = m.name
        if m.tool_calls:
            if m.role != "assistant":
                raise APIError(f"messages.{i}: only assistant messages carry tool_calls", 400,
                               param=f"messages.{i}.tool_calls")
            d["tool_calls"] = [{"id": c.id, "type": "function", "function": {
                "name": c.function.name, "arguments": _arguments(c.function.arguments, i)}}
                for c in m.tool_calls]
        if m.role == "tool":
            if m.tool_call_id is None:
                raise APIError(f"messages.{i}: a tool message needs tool_call_id", 400,
                               param=f"messages.{i}.tool_call_id")
            d["tool_call_id"] = m.tool_call_id
        out.append(d)
    return out


def _arguments(text: str, i: int):
    try:
        return json.loads(text)
    except ValueError:
        raise APIError(f"messages.{i}: tool call arguments are not valid JSON: {text[:80]!r}", 400,
                       param=f"messages.{i}.tool_calls") from None


def template_renders_tools(state: ServerState) -> bool:
    return template_supports_tools(state.chat_template_text())


def chat_prompt(state: ServerState, messages: list[ChatMessage], *, add_generation_prompt: bool,
                continue_final_message: bool = False, tools: list[ToolDefinition] | None = None,
                chat_template_kwargs: dict | None = None) -> str:
    tk = require_tokenizer(state, "no chat template; use /v1/completions with token ids")
    template = state.chat_template_text()
    if not template:
        raise APIError("this model has no chat template; start the server with --chat-template "
                       "FILE, or use /v1/completions", 400, param="messages")
    if continue_final_message and add_generation_prompt:
        raise APIError("continue_final_message=true needs add_generation_prompt=false", 400,
                       param="continue_final_message")
    if continue_final_message and messages[-1].role != "assistant":
        raise APIError("continue_final_message=true needs the last message to be the assistant's",
                       400, param="continue_final_message")
    extra = dict(chat_template_kwargs or {})
    clash = sorted(set(extra) & set(RESERVED_TEMPLATE_VARIABLES))
    if clash:
        raise APIError(f"chat_template_kwargs may not set {clash}; they come from the request's "
                       f"own fields", 400, param="chat_template_kwargs")
    if tools:
        if not template_renders_tools(state):
            raise APIError("this model's chat template does not render tools; start the server "
                           "with --chat-template FILE (a template that does) or --chat-template "
                           "hermes (the Hermes form Qwen2.5 uses, shipped with turboctx)", 400,
                           param="tools")
        extra["tools"] = [t.model_dump(exclude_none=True) for t in tools]
    msgs = template_messages(messages)
    try:
        text = tk.apply_chat_template(msgs, add_generation_prompt=add_generation_prompt,
                                      chat_template=template, **extra)
    except Exception as e:        # a template may raise on roles or orders it does not accept
        raise APIError(f"the chat template rejected these messages: {e}", 400, param="messages") from None
    if continue_final_message:
        last = msgs[-1]["content"]
        end = text.rfind(last) if last else -1
        if end < 0:
            raise APIError("continue_final_message: the chat template does not render the last "
                           "message's text as given", 400, param="continue_final_message")
        text = text[:end + len(last)]
    return text
