"""What both endpoints share: the server state, request -> SamplingParams, submitting to the
engine loop, disconnect handling, SSE framing, streamed-text hold-back and logprob formatting."""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import AsyncIterator

from starlette.requests import Request as HTTPRequest
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from turboctx.engine.outputs import RequestOutput
from turboctx.engine.sampling_params import SamplingParams
from turboctx.errors import InvalidRequestError
from turboctx.server.engine_loop import EngineBusy, EngineLoop, RequestStream, StreamError
from turboctx.server.errors import APIError, error_body, from_engine_error
from turboctx.server.metrics import ServerMetrics
from turboctx.server.protocol import PromptTokensDetails, Usage, _SamplingFields, random_id


@dataclass
class ServerState:
    engine_loop: EngineLoop
    model_names: list[str]
    metrics: ServerMetrics
    max_model_len: int = 0
    token_cache: dict[int, tuple[str, list[int]]] = field(default_factory=dict)

    @property
    def engine(self):
        return self.engine_loop.engine

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def check_model(self, name: str) -> None:
        if name not in self.model_names:
            raise APIError(f"model {name!r} is not served here; available: {', '.join(self.model_names)}",
                           400, param="model", code="model_not_found")

    def token_str(self, tok: int) -> str:
        return self.token_info(tok)[0]

    def token_info(self, tok: int) -> tuple[str, list[int]]:
        """(text, exact UTF-8 bytes) of one token; a token that ends inside a multi-byte character
        has a text with U+FFFD, its bytes stay exact (byte-level BPE vocabularies)."""
        info = self.token_cache.get(tok)
        if info is None:
            info = self.token_cache[tok] = _token_info(self.tokenizer, tok)
        return info


def _token_info(tk, tok: int) -> tuple[str, list[int]]:
    if tk is None:
        return str(tok), list(str(tok).encode())
    text = tk.decode([tok], skip_special_tokens=False)
    piece = tk.id_to_token(tok)
    if piece is not None:
        try:
            raw = bytes(_inverse_bytes()[c] for c in piece)
            if raw.decode("utf-8", errors="replace") == text:
                return text, list(raw)
        except KeyError:
            pass
    return text, list(text.encode())


@lru_cache(maxsize=1)
def _inverse_bytes() -> dict[str, int]:
    from turboctx.tokenizer import _bytes_to_unicode
    return {c: b for b, c in _bytes_to_unicode().items()}


MIN_TOP_P = 1e-30


def _top_p(top_p: float | None) -> float:
    """The sampler compares top_p in float32, where a top_p under ~1e-45 rounds to 0 and would drop
    every token (NaN probabilities, a failed engine step). Any top_p under 1/vocab keeps only the
    top token anyway, so raising a tiny positive top_p to 1e-30 changes nothing else; 0 and
    negative values still reach the engine's validation (a 400)."""
    if top_p is None:
        return 1.0
    return max(top_p, MIN_TOP_P) if top_p > 0 else top_p


def refuse_unsupported(body: _SamplingFields) -> None:
    def bad(param: str, msg: str):
        raise APIError(msg, 400, param=param, code="unsupported_parameter")
    if body.n not in (None, 1):
        bad("n", f"n={body.n} is not supported; this server returns one choice per request (n=1)")
    if getattr(body, "best_of", None) not in (None, 1):
        bad("best_of", f"best_of={body.best_of} is not supported; use best_of=1")
    if body.presence_penalty or body.frequency_penalty:
        bad("presence_penalty" if body.presence_penalty else "frequency_penalty",
            "presence_penalty and frequency_penalty are not supported; leave them at 0")
    if body.logit_bias:
        bad("logit_bias", "logit_bias is not supported")
    if getattr(body, "tools", None):
        bad("tools", "tools (function calling) are not supported")
    rf = getattr(body, "response_format", None)
    if rf and rf.get("type", "text") != "text":
        bad("response_format", f"response_format type {rf.get('type')!r} is not supported; only 'text'")
    if getattr(body, "suffix", None):
        bad("suffix", "suffix is not supported")
    if body.stream_options is not None and not body.stream:
        bad("stream_options", "stream_options is only allowed when stream is true")


def sampling_params(body: _SamplingFields, max_tokens: int | None, prompt_len: int, max_model_len: int,
                    logprobs: int | None) -> SamplingParams:
    if max_tokens is None:      # OpenAI: as many as fit
        max_tokens = max(1, max_model_len - prompt_len)
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=_top_p(body.top_p),
            top_k=-1 if body.top_k is None else body.top_k,
            seed=body.seed, stop=body.stop, stop_token_ids=body.stop_token_ids or [],
            ignore_eos=bool(body.ignore_eos), logprobs=logprobs,
            skip_special_tokens=body.skip_special_tokens is not False,
            include_stop_str_in_output=bool(body.include_stop_str_in_output))
    except InvalidRequestError as e:
        raise from_engine_error(e) from None


async def submit(state: ServerState, prompt_ids: list[int], params: SamplingParams, prefix: str) -> RequestStream:
    eng = state.engine
    rid = random_id(prefix)
    try:
        if len(prompt_ids) < 20000:
            req = eng.make_request(prompt_ids, params, request_id=rid)
        else:                      # checking a long prompt's ids takes a while: not on the event loop
            req = await asyncio.to_thread(eng.make_request, prompt_ids, params, rid)
    except InvalidRequestError as e:
        state.metrics.rejected.labels("400").inc()
        raise from_engine_error(e, "messages" if prefix == "chatcmpl" else "prompt") from None
    try:
        return state.engine_loop.submit(req, asyncio.get_running_loop())
    except EngineBusy as e:
        state.metrics.rejected.labels(str(e.status)).inc()
        raise APIError(str(e), e.status) from None


async def tokenize(state: ServerState, text: str, add_special_tokens: bool) -> list[int]:
    tk = state.tokenizer
    if tk is None:
        raise APIError("this model has no tokenizer; send the prompt as a list of token ids", 400, param="prompt")
    if len(text) < 20000:
        return tk.encode(text, add_special_tokens=add_special_tokens)
    return await asyncio.to_thread(tk.encode, text, add_special_tokens)


async def final_output(state: ServerState, stream: RequestStream, http: HTTPRequest) -> RequestOutput:
    """Waits for the request to finish; a client that disconnects meanwhile aborts it."""
    async def watch():
        while True:
            msg = await http.receive()
            if msg["type"] == "http.disconnect":
                state.engine_loop.abort(stream.request_id)
                return
    watcher = asyncio.create_task(watch())
    last = None
    try:
        async for item in stream:
            if isinstance(item, StreamError):
                raise APIError(item.message, item.status)
            last = item
    finally:
        watcher.cancel()
        if not stream.finished:
            state.engine_loop.abort(stream.request_id)
    return last


def usage_of(out: RequestOutput) -> Usage:
    p, c = len(out.prompt_token_ids), out.num_output_tokens
    return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c,
                 prompt_tokens_details=PromptTokensDetails(cached_tokens=out.metrics.num_cached_tokens))


def sse(obj) -> str:
    data = obj.model_dump_json(exclude_unset=False) if hasattr(obj, "model_dump_json") else json.dumps(obj)
    return f"data: {data}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def sse_error(message: str, status: int) -> str:
    return f"data: {json.dumps(error_body(message, status))}\n\n"


async def stream_sse(state: ServerState, stream: RequestStream, stop: list[str], chunk, usage_chunk,
                     logprobs_of=None, first: str | None = None,
                     include_usage: bool = False) -> AsyncIterator[str]:
    """The SSE body of a streamed response, for both endpoints: `first` (if any), then a chunk per
    engine update with the new text (past the stop holdback), the new tokens' logprobs
    (`logprobs_of(output, start, end)`) and the finish reason; the usage chunk if asked; [DONE].
    chunk(text, logprobs, finish) and usage_chunk(usage) build the endpoint's SSE lines. A request
    whose client goes away mid-stream is aborted."""
    held = TextHoldback(stop)
    sent_tokens, last = 0, None
    try:
        if first is not None:
            yield first
        async for item in stream:
            if isinstance(item, StreamError):
                yield sse_error(item.message, item.status)
                break
            last = item
            text = held.delta(item.text, item.finished)
            n = item.num_output_tokens
            lp = logprobs_of(item, sent_tokens, n) if logprobs_of is not None and n > sent_tokens else None
            sent_tokens = n
            finish = item.finish_reason if item.finished else None
            if text or lp or finish:
                yield chunk(text, lp, finish)
        if include_usage and last is not None and last.finished:
            yield usage_chunk(usage_of(last))
        yield SSE_DONE
    finally:
        if not stream.finished:
            state.engine_loop.abort(stream.request_id)


class TextHoldback:
    """Streams a growing text without ever sending what may still change: a trailing partial UTF-8
    character ('\\ufffd') or a tail that could be the start of a stop string (it would be cut)."""

    def __init__(self, stop: list[str]):
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.sent = 0

    def delta(self, text: str, finished: bool) -> str:
        end = len(text)
        if not finished:
            end -= self.hold
            while end > self.sent and text[end - 1] == "\ufffd":
                end -= 1
        if end <= self.sent:
            return ""
        d, self.sent = text[self.sent:end], end
        return d


def top_sorted(d: dict[int, float], k: int) -> list[tuple[int, float]]:
    return sorted(d.items(), key=lambda kv: -kv[1])[:k]


class SSEResponse(StreamingResponse):
    """Server-sent events that always watch for the client leaving, whatever the ASGI version:
    a disconnect cancels the body iterator (whose `finally` aborts the request)."""
    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[str]):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope = dict(scope)
        scope["asgi"] = {**scope.get("asgi", {}), "spec_version": "2.0"}
        await super().__call__(scope, receive, send)
