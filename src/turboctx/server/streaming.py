"""Server-sent events: framing, the held-back text of a stream, and the driver that turns the
engine updates of a request's choices into SSE lines (endpoints say what each line holds)."""
from __future__ import annotations

import json
from typing import AsyncIterator, Callable, Protocol

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from turboctx.engine.outputs import RequestOutput
from turboctx.server.choices import Choices
from turboctx.server.engine_loop import StreamError
from turboctx.server.errors import error_body
from turboctx.server.responses import Usage

SSE_DONE = "data: [DONE]\n\n"


def sse(obj) -> str:
    data = obj.model_dump_json(exclude_unset=False) if hasattr(obj, "model_dump_json") else json.dumps(obj)
    return f"data: {data}\n\n"


def sse_error(message: str, status: int) -> str:
    return f"data: {json.dumps(error_body(message, status))}\n\n"


class ChoiceStreamer(Protocol):
    """What an endpoint sends for one choice: lines before any output, then per engine update."""

    def start(self) -> list[str]: ...

    def update(self, out: RequestOutput) -> list[str]: ...


async def stream_choices(choices: Choices, streamers: list[ChoiceStreamer],
                         usage_chunk: Callable[[Usage], str] | None) -> AsyncIterator[str]:
    """The SSE body of a streamed response: each choice's start lines, then its update lines as
    the engine produces them (choices interleave), the usage chunk when asked for (usage_chunk
    not None) and every choice finished, then [DONE]. An engine failure ends the stream with an
    error event; a client that goes away aborts every unfinished choice."""
    try:
        for s in streamers:
            for line in s.start():
                yield line
        failed = False
        async for index, item in choices.updates():
            if isinstance(item, StreamError):
                yield sse_error(item.message, item.status)
                failed = True
                break
            for line in streamers[index].update(item):
                yield line
        if usage_chunk is not None and not failed and choices.all_finished:
            yield usage_chunk(choices.usage())
        yield SSE_DONE
    finally:
        choices.abort_unfinished()


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
