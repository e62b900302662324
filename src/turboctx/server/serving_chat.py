"""POST /v1/chat/completions."""
from __future__ import annotations

from typing import AsyncIterator

from starlette.requests import Request as HTTPRequest

from turboctx.engine.outputs import RequestOutput
from turboctx.server.engine_loop import RequestStream
from turboctx.server.errors import APIError
from turboctx.server.protocol import (ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionRequest,
                                      ChatCompletionResponse, ChatLogprobs, DeltaMessage, ResponseMessage,
                                      TokenLogprob, TopLogprob)
from turboctx.server.serving_common import (ServerState, SSEResponse, final_output, refuse_unsupported,
                                            sampling_params, sse, stream_sse, submit, tokenize, top_sorted,
                                            usage_of)


def _messages(body: ChatCompletionRequest) -> list[dict]:
    out = []
    for m in body.messages:
        content = m.content
        if isinstance(content, list):
            content = "".join(p.text for p in content)
        role = "system" if m.role == "developer" else m.role
        out.append({"role": role, "content": content or ""})
    return out


def _logprobs(state: ServerState, out: RequestOutput, start: int, end: int, k: int) -> ChatLogprobs:
    items = []
    for tok, d in zip(out.token_ids[start:end], out.logprobs[start:end]):
        s, b = state.token_info(tok)
        tops = [TopLogprob(token=ts, logprob=lp, bytes=tb)
                for t, lp in top_sorted(d, k) for ts, tb in [state.token_info(t)]]
        items.append(TokenLogprob(token=s, logprob=d[tok], bytes=b, top_logprobs=tops))
    return ChatLogprobs(content=items)


async def create_chat_completion(state: ServerState, body: ChatCompletionRequest, http: HTTPRequest):
    state.check_model(body.model)
    refuse_unsupported(body)
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError("top_logprobs needs logprobs=true", 400, param="top_logprobs")
    tk = state.tokenizer
    if tk is None:
        raise APIError("this model has no tokenizer, so no chat template; use /v1/completions with token ids", 400)
    try:
        prompt = tk.apply_chat_template(_messages(body), add_generation_prompt=body.add_generation_prompt is not False)
    except Exception as e:        # a template may raise on roles or orders it does not accept
        raise APIError(f"the chat template rejected these messages: {e}", 400, param="messages") from None
    ids = await tokenize(state, prompt, add_special_tokens=False)
    k = (body.top_logprobs or 0) if body.logprobs else None
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    params = sampling_params(body, max_tokens, len(ids), state.max_model_len, k)
    stream = await submit(state, ids, params, "chatcmpl")
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return SSEResponse(_stream(state, body, stream, params.stop, k, include_usage))
    out = await final_output(state, stream, http)
    lp = _logprobs(state, out, 0, len(out.token_ids), k) if k is not None else None
    return ChatCompletionResponse(
        id=stream.request_id, model=body.model, usage=usage_of(out),
        choices=[ChatChoice(message=ResponseMessage(content=out.text), logprobs=lp,
                            finish_reason=out.finish_reason)])


def _stream(state: ServerState, body: ChatCompletionRequest, stream: RequestStream, stop: list[str],
            k: int | None, include_usage: bool) -> AsyncIterator[str]:
    rid, model = stream.request_id, body.model

    def chunk(text: str, lp=None, finish=None, role: str | None = None) -> str:
        return sse(ChatCompletionChunk(id=rid, model=model, choices=[
            ChatChunkChoice(delta=DeltaMessage(role=role, content=text), logprobs=lp, finish_reason=finish)]))

    return stream_sse(
        state, stream, stop, chunk,
        lambda usage: sse(ChatCompletionChunk(id=rid, model=model, choices=[], usage=usage)),
        None if k is None else (lambda out, lo, hi: _logprobs(state, out, lo, hi, k)),
        first=chunk("", role="assistant"), include_usage=include_usage)
