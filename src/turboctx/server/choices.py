"""The engine requests behind one API request: one per choice (prompts x n), submitted together,
finished together, aborted together when the client leaves."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import AsyncIterator

from starlette.requests import Request as HTTPRequest

from turboctx.engine.outputs import RequestOutput
from turboctx.engine.sampling_params import SamplingParams
from turboctx.errors import InvalidRequestError
from turboctx.server.engine_loop import EngineBusy, RequestStream, StreamError
from turboctx.server.errors import APIError, from_engine_error
from turboctx.server.responses import PromptTokensDetails, Usage

LONG_PROMPTS = 20000      # checking this many prompt ids takes a while: not on the event loop


@dataclass
class ChoiceSpec:
    """What one choice asks of the engine. prompt_index: which prompt of the request it answers
    (its usage counts each prompt once)."""
    index: int
    prompt_index: int
    prompt_ids: list[int]
    params: SamplingParams


class Choices:
    def __init__(self, state, request_id: str, specs: list[ChoiceSpec], streams: list[RequestStream]):
        self.state, self.request_id, self.specs, self.streams = state, request_id, specs, streams
        self.final: dict[int, RequestOutput] = {}

    @classmethod
    async def submit(cls, state, request_id: str, specs: list[ChoiceSpec], prompt_param: str
                     ) -> "Choices":
        """Checks every choice's request first (a bad one is a 400 and nothing runs), then hands
        them all to the engine; if the server cannot take them all, none runs."""
        eng = state.engine

        def make_all():
            return [eng.make_request(s.prompt_ids, s.params, request_id=f"{request_id}-{s.index}")
                    for s in specs]
        try:
            if sum(len(s.prompt_ids) for s in specs) < LONG_PROMPTS:
                reqs = make_all()
            else:
                reqs = await asyncio.to_thread(make_all)
        except InvalidRequestError as e:
            state.metrics.rejected.labels("400").inc()
            raise from_engine_error(e, prompt_param) from None
        loop, streams = asyncio.get_running_loop(), []
        try:
            for r in reqs:
                streams.append(state.engine_loop.submit(r, loop))
        except EngineBusy as e:
            for s in streams:
                state.engine_loop.abort(s.request_id)
            state.metrics.rejected.labels(str(e.status)).inc()
            raise APIError(str(e), e.status) from None
        return cls(state, request_id, specs, streams)

    @property
    def all_finished(self) -> bool:
        return len(self.final) == len(self.specs)

    def abort_unfinished(self) -> None:
        for s in self.streams:
            if not s.finished:
                self.state.engine_loop.abort(s.request_id)

    async def updates(self) -> AsyncIterator[tuple[int, RequestOutput | StreamError]]:
        """(choice index, engine update) of every choice as they come, until all are finished or
        one fails (a StreamError ends the iteration)."""
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, stream: RequestStream):
            async for item in stream:
                queue.put_nowait((i, item))
        tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(self.streams)]
        try:
            while not self.all_finished:
                i, item = await queue.get()
                if isinstance(item, StreamError):
                    yield i, item
                    return
                if item.finished:
                    self.final[i] = item
                yield i, item
        finally:
            for t in tasks:
                t.cancel()

    async def results(self, http: HTTPRequest) -> list[RequestOutput]:
        """Every choice's final output, in index order. A client that disconnects meanwhile (one
        watcher for all choices) aborts them all; an engine failure is an error response."""
        async def watch():
            while True:
                msg = await http.receive()
                if msg["type"] == "http.disconnect":
                    self.abort_unfinished()
                    return
        watcher = asyncio.create_task(watch())
        try:
            async for _, item in self.updates():
                if isinstance(item, StreamError):
                    raise APIError(item.message, item.status)
        finally:
            watcher.cancel()
            self.abort_unfinished()
        return [self.final[i] for i in range(len(self.specs))]

    def usage(self, completion_tokens: list[int] | None = None) -> Usage:
        """Each prompt counted once, every choice's output. completion_tokens: per choice, when an
        endpoint returns fewer tokens than were generated (echo with max_tokens 0)."""
        prompt = cached = 0
        seen = set()
        for s, out in zip(self.specs, (self.final[i] for i in range(len(self.specs)))):
            if s.prompt_index not in seen:
                seen.add(s.prompt_index)
                prompt += len(out.prompt_token_ids)
                cached += out.metrics.num_cached_tokens
        done = completion_tokens or [self.final[i].num_output_tokens for i in range(len(self.specs))]
        completion = sum(done)
        return Usage(prompt_tokens=prompt, completion_tokens=completion,
                     total_tokens=prompt + completion,
                     prompt_tokens_details=PromptTokensDetails(cached_tokens=cached))
