"""Request bodies of the OpenAI API (the parts we serve) and of vLLM's tokenizer endpoints.

Requests are strict: a string where a number belongs is a 400, not a silent conversion, and a
field this server does not know is a 400 naming it (never silently dropped). Fields that exist in
OpenAI's API but that we do not implement are listed here and accepted only at their neutral
value (serving/fields.py says which and why).
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

MAX_TOP_LOGPROBS = 20
MAX_CHOICES = 128                                  # prompts x n in one request
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1      # OpenAI's seed is an int64 (so is torch's)


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True)


class StreamOptions(_Strict):
    include_usage: Optional[bool] = False
    continuous_usage_stats: Optional[bool] = False


class _SamplingFields(_Strict):
    """Fields shared by chat and text completions (OpenAI names; vLLM extras at the end).
    None means "not given": the model's generation config, then OpenAI's default, applies."""
    model: str
    max_tokens: Optional[int] = Field(default=None, ge=0)
    temperature: Optional[float] = Field(default=None, ge=0, le=2)
    top_p: Optional[float] = Field(default=None, ge=0, le=1)
    n: Optional[int] = Field(default=1, ge=1, le=MAX_CHOICES)
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[int] = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    presence_penalty: Optional[float] = Field(default=None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(default=None, ge=-2, le=2)
    logit_bias: Optional[dict[str, float]] = None
    user: Optional[str] = None
    # OpenAI fields served only at their neutral value (serving/fields.py)
    store: Optional[bool] = None
    metadata: Optional[dict[str, str]] = None
    service_tier: Optional[str] = None
    # vLLM-style extras
    top_k: Optional[int] = None
    min_p: Optional[float] = Field(default=None, ge=0, le=1)
    repetition_penalty: Optional[float] = Field(default=None, gt=0)
    min_tokens: Optional[int] = Field(default=None, ge=0)
    structured_outputs: Optional[dict[str, Any]] = None   # json | json_object | regex | choice | grammar
    ignore_eos: Optional[bool] = False
    stop_token_ids: Optional[list[int]] = None
    skip_special_tokens: Optional[bool] = True
    include_stop_str_in_output: Optional[bool] = False


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str
    arguments: str                      # a JSON text, as OpenAI sends it


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Optional[Union[str, list[TextPart]]] = None
    name: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None       # assistant turns that called tools
    tool_call_id: Optional[str] = None                # tool turns: the call answered
    # what the openai client sends back when a response message is reused as a request message
    refusal: Optional[str] = None
    annotations: Optional[list[Any]] = None
    audio: Optional[Any] = None
    function_call: Optional[Any] = None


class FunctionDefinition(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    strict: Optional[bool] = None


class ToolDefinition(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(_Strict):
    name: str = Field(min_length=1, max_length=64)
    description: Optional[str] = None
    json_schema: Optional[dict[str, Any]] = Field(default=None, alias="schema")
    strict: Optional[bool] = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JSONSchemaFormat] = None


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    logprobs: Optional[bool] = False
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: Optional[ResponseFormat] = None
    tools: Optional[list[ToolDefinition]] = None
    tool_choice: Optional[Union[Literal["none", "auto", "required"], NamedToolChoice]] = None
    parallel_tool_calls: Optional[bool] = None
    # OpenAI fields served only at their neutral value (serving/fields.py)
    modalities: Optional[list[str]] = None
    audio: Optional[dict[str, Any]] = None
    prediction: Optional[dict[str, Any]] = None
    reasoning_effort: Optional[str] = None
    web_search_options: Optional[dict[str, Any]] = None
    functions: Optional[list[Any]] = None
    function_call: Optional[Any] = None
    # vLLM-style extras
    add_generation_prompt: Optional[bool] = True
    continue_final_message: Optional[bool] = False
    chat_template_kwargs: Optional[dict[str, Any]] = None


class CompletionRequest(_SamplingFields):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    logprobs: Optional[int] = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: Optional[bool] = False
    best_of: Optional[int] = Field(default=None, ge=1)
    suffix: Optional[str] = None


class TokenizeRequest(_Strict):
    """vLLM's POST /tokenize: a prompt, or chat messages rendered by the chat template."""
    model: Optional[str] = None
    prompt: Optional[str] = None
    messages: Optional[list[ChatMessage]] = None
    add_special_tokens: Optional[bool] = None     # default: true for a prompt, false for messages
    add_generation_prompt: Optional[bool] = True
    continue_final_message: Optional[bool] = False
    tools: Optional[list[ToolDefinition]] = None
    chat_template_kwargs: Optional[dict[str, Any]] = None
    return_token_strs: Optional[bool] = False


class DetokenizeRequest(_Strict):
    model: Optional[str] = None
    tokens: list[int]
