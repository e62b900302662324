"""POST /v1/completions."""
from __future__ import annotations

from typing import AsyncIterator

from starlette.requests import Request as HTTPRequest

from turboctx.engine.outputs import RequestOutput
from turboctx.server.engine_loop import RequestStream
from turboctx.server.errors import APIError
from turboctx.server.protocol import CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse
from turboctx.server.serving_common import (ServerState, SSEResponse, final_output, refuse_unsupported,
                                            sampling_params, sse, stream_sse, submit, tokenize, top_sorted,
                                            usage_of)


def _single_prompt(prompt) -> str | list[int]:
    if isinstance(prompt, str):
        return prompt
    if prompt and all(isinstance(t, int) for t in prompt):
        return prompt
    if len(prompt) == 1:                     # ["text"] or [[ids]]
        return prompt[0]
    if not prompt:
        raise APIError("prompt is empty", 400, param="prompt")
    raise APIError(f"{len(prompt)} prompts in one request are not supported; send one prompt per request",
                   400, param="prompt", code="unsupported_parameter")


class _LogprobBuilder:
    def __init__(self, state: ServerState, k: int, offset: int = 0):
        self.state, self.k, self.offset = state, k, offset

    def build(self, out: RequestOutput, start: int, end: int) -> CompletionLogprobs:
        lp = CompletionLogprobs()
        for tok, d in zip(out.token_ids[start:end], out.logprobs[start:end]):
            s = self.state.token_str(tok)
            lp.tokens.append(s)
            lp.token_logprobs.append(d[tok])
            top = {self.state.token_str(t): v for t, v in top_sorted(d, self.k)}
            top.setdefault(s, d[tok])          # OpenAI: the sampled token is always there too
            lp.top_logprobs.append(top)
            lp.text_offset.append(self.offset)
            self.offset += len(s)
        return lp


async def create_completion(state: ServerState, body: CompletionRequest, http: HTTPRequest):
    state.check_model(body.model)
    refuse_unsupported(body)
    prompt = _single_prompt(body.prompt)
    if isinstance(prompt, str):
        if not prompt:
            raise APIError("prompt is empty; give at least one token", 400, param="prompt")
        ids = await tokenize(state, prompt, add_special_tokens=True)
    else:
        ids = list(prompt)
    echo = ""
    if body.echo:
        echo = prompt if isinstance(prompt, str) else (state.tokenizer.decode(ids) if state.tokenizer else "")
    k = body.logprobs
    params = sampling_params(body, body.max_tokens, len(ids), state.max_model_len, k)
    stream = await submit(state, ids, params, "cmpl")
    lpb = _LogprobBuilder(state, k or 0, len(echo)) if k is not None else None
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return SSEResponse(_stream(state, body, stream, params.stop, lpb, echo, include_usage))
    out = await final_output(state, stream, http)
    lp = lpb.build(out, 0, len(out.token_ids)) if lpb else None
    return CompletionResponse(id=stream.request_id, model=body.model, usage=usage_of(out), choices=[
        CompletionChoice(text=echo + out.text, logprobs=lp, finish_reason=out.finish_reason)])


def _stream(state: ServerState, body: CompletionRequest, stream: RequestStream, stop: list[str],
            lpb: _LogprobBuilder | None, echo: str, include_usage: bool) -> AsyncIterator[str]:
    rid, model = stream.request_id, body.model

    def chunk(text: str, lp=None, finish=None) -> str:
        return sse(CompletionResponse(id=rid, model=model, choices=[
            CompletionChoice(text=text, logprobs=lp, finish_reason=finish)]))

    return stream_sse(
        state, stream, stop, chunk,
        lambda usage: sse(CompletionResponse(id=rid, model=model, choices=[], usage=usage)),
        lpb.build if lpb else None, first=chunk(echo) if echo else None, include_usage=include_usage)
