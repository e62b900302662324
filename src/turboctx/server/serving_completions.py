"""POST /v1/completions: one prompt or a list (strings or token-id lists), n choices each, echo
and logprobs as scoring harnesses use them (lm-evaluation-harness's loglikelihood requests send
`echo: true, logprobs: k, max_tokens: 0 or 1` and read the prompt tokens' logprobs)."""
from __future__ import annotations

from starlette.requests import Request as HTTPRequest

from turboctx.engine.outputs import RequestOutput
from turboctx.server.choices import ChoiceSpec, Choices
from turboctx.server.errors import APIError
from turboctx.server.protocol import MAX_CHOICES, CompletionRequest, random_id
from turboctx.server.request_fields import check_neutral_fields, choice_seed, sampling_params
from turboctx.server.responses import CompletionChoice, CompletionLogprobs, CompletionResponse
from turboctx.server.serving_common import ServerState, tokenize, top_sorted
from turboctx.server.streaming import SSEResponse, TextHoldback, sse, stream_choices
from turboctx.server.tools import structured_spec


def prompts_of(prompt) -> list[str | list[int]]:
    """One prompt or a list of them; each a non-empty string or token-id list."""
    if isinstance(prompt, str) or (prompt and all(isinstance(t, int) for t in prompt)):
        prompts = [prompt]
    else:
        prompts = list(prompt)
    if not prompts:
        raise APIError("prompt is empty; give a string, a token-id list or a list of them", 400,
                       param="prompt")
    for i, p in enumerate(prompts):
        if not p:
            where = "prompt" if len(prompts) == 1 else f"prompt.{i}"
            raise APIError(f"{where} is empty; give at least one token", 400, param=where)
    return prompts


class LogprobBuilder:
    """OpenAI's legacy logprobs of one choice: tokens, token_logprobs, top_logprobs (the top k
    plus the token itself) and text_offset, counted over the echoed prompt and the output."""

    def __init__(self, state: ServerState, k: int):
        self.state, self.k, self.offset = state, k, 0

    def _add(self, lp: CompletionLogprobs, tok: int, d: dict[int, float] | None) -> None:
        s = self.state.token_str(tok)
        lp.tokens.append(s)
        lp.text_offset.append(self.offset)
        self.offset += len(s)
        if d is None:                       # the first prompt token has no logprob
            lp.token_logprobs.append(None)
            lp.top_logprobs.append(None)
            return
        lp.token_logprobs.append(d[tok])
        top = {self.state.token_str(t): v for t, v in top_sorted(d, self.k)}
        top.setdefault(s, d[tok])
        lp.top_logprobs.append(top)

    def prompt(self, out: RequestOutput, into: CompletionLogprobs | None = None) -> CompletionLogprobs:
        lp = into or CompletionLogprobs()
        for tok, d in zip(out.prompt_token_ids, out.prompt_logprobs):
            self._add(lp, tok, d)
        return lp

    def generated(self, out: RequestOutput, start: int, end: int,
                  into: CompletionLogprobs | None = None) -> CompletionLogprobs:
        lp = into or CompletionLogprobs()
        for tok, d in zip(out.token_ids[start:end], out.logprobs[start:end]):
            self._add(lp, tok, d)
        return lp


class _Plan:
    """What the response shows of one choice: the echoed prompt, and whether the generated
    tokens are shown (max_tokens 0 with echo runs one token and shows none)."""

    def __init__(self, body: CompletionRequest, echo_text: str, show_output: bool, state: ServerState):
        self.echo = bool(body.echo)
        self.echo_text = echo_text
        self.show_output = show_output
        self.k = body.logprobs
        self.lpb = LogprobBuilder(state, self.k) if self.k is not None else None
        self.prompt_logprobs = self.echo and self.k is not None

    def choice(self, index: int, out: RequestOutput) -> CompletionChoice:
        lp = None
        if self.lpb is not None:
            lp = self.lpb.prompt(out) if self.prompt_logprobs else None
            if self.show_output:
                lp = self.lpb.generated(out, 0, out.num_output_tokens, into=lp)
        text = (self.echo_text if self.echo else "") + (out.text if self.show_output else "")
        finish = out.finish_reason if self.show_output or out.finish_reason == "abort" else "length"
        return CompletionChoice(index=index, text=text, logprobs=lp, finish_reason=finish)


async def create_completion(state: ServerState, body: CompletionRequest, http: HTTPRequest):
    state.check_model(body.model)
    check_neutral_fields(body)
    prompts = prompts_of(body.prompt)
    n = body.n or 1
    if len(prompts) * n > MAX_CHOICES:
        raise APIError(f"{len(prompts)} prompts x n={n} is {len(prompts) * n} choices; at most "
                       f"{MAX_CHOICES} in one request", 400, param="n")
    if body.max_tokens == 0 and not body.echo:
        raise APIError("max_tokens=0 generates nothing; it is allowed only with echo=true (to "
                       "score the prompt with logprobs)", 400, param="max_tokens")
    show_output = body.max_tokens != 0
    spec = structured_spec(state, body)
    engine_max_tokens = 1 if body.max_tokens == 0 else body.max_tokens
    specs, plans = [], []
    for i, p in enumerate(prompts):
        ids = await tokenize(state, p, add_special_tokens=True) if isinstance(p, str) else list(p)
        echo_text = ""
        if body.echo:
            echo_text = p if isinstance(p, str) else (state.tokenizer.decode(ids) if state.tokenizer else "")
        for j in range(n):
            params = sampling_params(
                body, defaults=state.engine.generation_defaults, max_tokens=engine_max_tokens,
                prompt_len=len(ids), max_model_len=state.max_model_len, vocab_size=state.vocab_size,
                logprobs=body.logprobs if show_output else None,
                prompt_logprobs=body.logprobs if body.echo else None,
                seed=choice_seed(body.seed, j), structured_outputs=spec)
            specs.append(ChoiceSpec(len(specs), i, ids, params))
            plans.append(_Plan(body, echo_text, show_output, state))
    choices = await Choices.submit(state, random_id("cmpl"), specs, "prompt")
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        streamers = [_Streamer(choices.request_id, body.model, s.index, plan, s.params.stop)
                     for s, plan in zip(specs, plans)]
        usage_chunk = (lambda u: sse(CompletionResponse(id=choices.request_id, model=body.model,
                                                        choices=[], usage=u))) if include_usage else None
        return SSEResponse(stream_choices(choices, streamers, usage_chunk))
    outs = await choices.results(http)
    shown = [o.num_output_tokens if show_output else 0 for o in outs]
    return CompletionResponse(id=choices.request_id, model=body.model, usage=choices.usage(shown),
                              choices=[plan.choice(s.index, o) for s, plan, o in zip(specs, plans, outs)])


class _Streamer:
    """One choice's SSE chunks: the echo (with the prompt's logprobs, once they exist), then the
    new text past the stop holdback with the new tokens' logprobs, then the finish reason."""

    def __init__(self, rid: str, model: str, index: int, plan: _Plan, stop: list[str]):
        self.rid, self.model, self.index, self.plan = rid, model, index, plan
        self.held, self.sent_tokens, self.echoed = TextHoldback(stop), 0, False

    def _chunk(self, text: str, lp=None, finish=None) -> str:
        return sse(CompletionResponse(id=self.rid, model=self.model, choices=[
            CompletionChoice(index=self.index, text=text, logprobs=lp, finish_reason=finish)]))

    def start(self) -> list[str]:
        if self.plan.echo and not self.plan.prompt_logprobs:
            self.echoed = True
            return [self._chunk(self.plan.echo_text)]
        return []

    def update(self, out: RequestOutput) -> list[str]:
        lines, plan = [], self.plan
        if plan.echo and not self.echoed:
            self.echoed = True
            lines.append(self._chunk(plan.echo_text, plan.lpb.prompt(out)))
        finish = None
        if out.finished:
            finish = out.finish_reason if plan.show_output or out.finish_reason == "abort" else "length"
        if not plan.show_output:
            return lines + ([self._chunk("", None, finish)] if finish else [])
        text = self.held.delta(out.text, out.finished)
        n = out.num_output_tokens
        lp = plan.lpb.generated(out, self.sent_tokens, n) if plan.lpb and n > self.sent_tokens else None
        self.sent_tokens = n
        if text or lp or finish:
            lines.append(self._chunk(text, lp, finish))
        return lines
