"""POST /v1/chat/completions: the chat template, n choices, streaming, logprobs, structured
output (response_format, structured_outputs) and tools (tool_calls parsed, whole or streamed)."""
from __future__ import annotations

from starlette.requests import Request as HTTPRequest

from turboctx.engine.outputs import RequestOutput
from turboctx.server.chat_template import chat_prompt
from turboctx.server.choices import ChoiceSpec, Choices
from turboctx.server.errors import APIError
from turboctx.server.protocol import ChatCompletionRequest, random_id
from turboctx.server.request_fields import check_neutral_fields, choice_seed, sampling_params
from turboctx.server.responses import (ChatChoice, ChatChunkChoice, ChatCompletionChunk,
                                       ChatCompletionResponse, ChatLogprobs, DeltaMessage,
                                       ResponseMessage, TokenLogprob, TopLogprob)
from turboctx.server.serving_common import ServerState, tokenize, top_sorted
from turboctx.server.streaming import SSEResponse, TextHoldback, sse, stream_choices
from turboctx.server.tools import (ToolPlan, delta_out, finish_reason, structured_spec,
                                   tool_calls_out, tool_plan)


def logprobs_of(state: ServerState, out: RequestOutput, start: int, end: int, k: int) -> ChatLogprobs:
    items = []
    for tok, d in zip(out.token_ids[start:end], out.logprobs[start:end]):
        s, b = state.token_info(tok)
        tops = [TopLogprob(token=ts, logprob=lp, bytes=tb)
                for t, lp in top_sorted(d, k) for ts, tb in [state.token_info(t)]]
        items.append(TokenLogprob(token=s, logprob=d[tok], bytes=b, top_logprobs=tops))
    return ChatLogprobs(content=items)


async def create_chat_completion(state: ServerState, body: ChatCompletionRequest, http: HTTPRequest):
    state.check_model(body.model)
    check_neutral_fields(body)
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError("top_logprobs needs logprobs=true", 400, param="top_logprobs")
    if body.max_tokens == 0:
        raise APIError("max_tokens=0 generates nothing; give at least 1", 400, param="max_tokens")
    prompt = chat_prompt(state, body.messages, add_generation_prompt=body.add_generation_prompt is not False,
                         continue_final_message=bool(body.continue_final_message), tools=body.tools,
                         chat_template_kwargs=body.chat_template_kwargs)
    ids = await tokenize(state, prompt, add_special_tokens=False)
    plan = tool_plan(state, body)
    spec = structured_spec(state, body, plan)
    k = (body.top_logprobs or 0) if body.logprobs else None
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    specs = []
    for j in range(body.n or 1):
        params = sampling_params(body, defaults=state.engine.generation_defaults, max_tokens=max_tokens,
                                 prompt_len=len(ids), max_model_len=state.max_model_len,
                                 vocab_size=state.vocab_size, logprobs=k, seed=choice_seed(body.seed, j),
                                 structured_outputs=spec)
        specs.append(ChoiceSpec(j, 0, ids, params))
    choices = await Choices.submit(state, random_id("chatcmpl"), specs, "messages")
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        streamers = [_Streamer(state, choices.request_id, body.model, s.index, k, s.params.stop, plan)
                     for s in specs]
        usage_chunk = (lambda u: sse(ChatCompletionChunk(id=choices.request_id, model=body.model,
                                                         choices=[], usage=u))) if include_usage else None
        return SSEResponse(stream_choices(choices, streamers, usage_chunk))
    outs = await choices.results(http)
    return ChatCompletionResponse(id=choices.request_id, model=body.model, usage=choices.usage(), choices=[
        _choice(state, s.index, o, k, plan) for s, o in zip(specs, outs)])


def _choice(state: ServerState, index: int, out: RequestOutput, k: int | None, plan: ToolPlan) -> ChatChoice:
    content, calls = out.text, []
    if plan.parser is not None:
        parsed = plan.parser.parse(out.text)
        content, calls = parsed.content, parsed.tool_calls
    return ChatChoice(index=index, message=ResponseMessage(content=content, tool_calls=tool_calls_out(calls)),
                      logprobs=logprobs_of(state, out, 0, out.num_output_tokens, k) if k is not None else None,
                      finish_reason=finish_reason(out.finish_reason, bool(calls)))


class _Streamer:
    """One choice's SSE chunks: the assistant role first, then text deltas past the stop
    holdback (or, with tools, the streaming tool parser's content and tool-call deltas) with the
    new tokens' logprobs, then the finish reason."""

    def __init__(self, state: ServerState, rid: str, model: str, index: int, k: int | None,
                 stop: list[str], plan: ToolPlan):
        self.state, self.rid, self.model, self.index, self.k = state, rid, model, index, k
        self.held, self.sent_tokens = TextHoldback(stop), 0
        self.tools = plan.parser.streaming() if plan.parser is not None else None

    def _chunk(self, delta: DeltaMessage, lp=None, finish=None) -> str:
        return sse(ChatCompletionChunk(id=self.rid, model=self.model, choices=[
            ChatChunkChoice(index=self.index, delta=delta, logprobs=lp, finish_reason=finish)]))

    def start(self) -> list[str]:
        return [self._chunk(DeltaMessage(role="assistant", content=""))]

    def update(self, out: RequestOutput) -> list[str]:
        text = self.held.delta(out.text, out.finished)
        n = out.num_output_tokens
        lp = None
        if self.k is not None and n > self.sent_tokens:
            lp = logprobs_of(self.state, out, self.sent_tokens, n, self.k)
        self.sent_tokens = n
        finish = out.finish_reason if out.finished else None
        if self.tools is None:
            if text or lp or finish:
                return [self._chunk(DeltaMessage(content=text), lp, finish)]
            return []
        deltas = self.tools.feed(text) if text else []
        if out.finished:
            deltas += self.tools.finish()
            finish = finish_reason(finish, bool(self.tools.result().tool_calls))
        lines = [self._chunk(delta_out(d), lp if i == 0 else None) for i, d in enumerate(deltas)]
        if lp is not None and not deltas:
            lines.append(self._chunk(DeltaMessage(), lp))
        if finish:
            lines.append(self._chunk(DeltaMessage(), None, finish))
        return lines
