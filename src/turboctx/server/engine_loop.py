"""One background thread owns the LLMEngine and runs `step()` while there is work.

Other threads (the asyncio event loop of the server) talk to it only through a command inbox
(`submit`, `abort`, `cancel_all`); outputs go back to per-request asyncio queues through
`loop.call_soon_threadsafe`. Aborts free the request's KV blocks before the next step.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator

from turboctx.engine.outputs import RequestOutput
from turboctx.engine.request import Request
from turboctx.errors import TensorParallelError

log = logging.getLogger("turboctx.server")


@dataclass
class StreamError:
    """Sent instead of an output when the request cannot finish (shutdown, engine failure)."""
    message: str
    status: int = 503


class RequestStream:
    """The asyncio side of one request: outputs arrive in `queue` in order."""

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop):
        self.request_id, self.loop = request_id, loop
        self.queue: asyncio.Queue[RequestOutput | StreamError] = asyncio.Queue()
        self.finished = False

    def put_threadsafe(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:          # the event loop is closed: nobody is listening any more
            pass

    async def __aiter__(self) -> AsyncIterator[RequestOutput | StreamError]:
        while not self.finished:
            item = await self.queue.get()
            if isinstance(item, StreamError) or item.finished:
                self.finished = True
            yield item


class EngineBusy(Exception):
    """The server takes no more requests now (shutting down, or the waiting queue is full)."""

    def __init__(self, message: str, status: int = 503):
        super().__init__(message)
        self.status = status


class EngineLoop:
    def __init__(self, engine, metrics=None, max_waiting: int | None = None, idle_wait_s: float = 0.5):
        self.engine, self.metrics, self.max_waiting = engine, metrics, max_waiting
        self.idle_wait_s = idle_wait_s
        self._inbox: deque[tuple] = deque()
        self._cv = threading.Condition()
        self._streams: dict[str, RequestStream] = {}
        self._progress: dict[str, tuple[int, float]] = {}   # request id -> (tokens seen, last time)
        self._stop = False
        self.draining = False
        self.num_pending = 0         # submitted, not yet handed to the engine
        self.num_aborted = 0
        self.num_steps = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="turboctx-engine", daemon=True)

    # -- any thread -------------------------------------------------------------------------
    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def num_waiting(self) -> int:
        return self.engine.num_waiting() + self.num_pending

    def num_running(self) -> int:
        return self.engine.num_running()

    def kv_usage(self) -> float:
        return self.engine.kv_cache_usage().ratio

    def submit(self, req: Request, loop: asyncio.AbstractEventLoop) -> RequestStream:
        if self.draining or self._stop:
            raise EngineBusy("the server is shutting down and takes no new requests")
        if not self.alive:
            raise EngineBusy("the engine is not running" + (f": {self.error}" if self.error else ""))
        if self.max_waiting is not None and self.num_waiting() >= self.max_waiting:
            raise EngineBusy(f"{self.num_waiting()} requests are already waiting (limit "
                             f"{self.max_waiting}); retry later", 429)
        stream = RequestStream(req.request_id, loop)
        with self._cv:
            self._streams[req.request_id] = stream
            self.num_pending += 1
            self._inbox.append(("add", req))
            self._cv.notify()
        return stream

    def abort(self, request_id: str) -> None:
        with self._cv:
            self._inbox.append(("abort", request_id))
            self._cv.notify()

    def cancel_all(self, message: str) -> None:
        """Ends every request with a StreamError (used at shutdown)."""
        with self._cv:
            self._inbox.append(("cancel_all", message))
            self._cv.notify()

    def begin_shutdown(self, grace_s: float) -> None:
        """Stop taking requests; running ones may finish for grace_s seconds, then are cancelled."""
        if self.draining:
            return
        self.draining = True
        log.info("shutting down: %d running, %d waiting; cancelling what is left in %.0f s",
                 self.num_running(), self.num_waiting(), grace_s)
        t = threading.Timer(grace_s, self.cancel_all, args=("the server is shutting down",))
        t.daemon = True
        t.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.cancel_all("the server is shutting down")
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- the engine thread ------------------------------------------------------------------
    def _run(self) -> None:
        eng = self.engine
        try:
            while True:
                with self._cv:
                    while not self._inbox and not self._stop and not eng.has_unfinished():
                        self._cv.wait(self.idle_wait_s)
                    cmds = list(self._inbox)
                    self._inbox.clear()
                    self.num_pending -= sum(1 for c in cmds if c[0] == "add")
                    stop = self._stop
                for cmd in cmds:
                    self._handle(cmd)
                if stop:
                    self._handle(("cancel_all", "the server is shutting down"))
                    return
                if eng.has_unfinished():
                    self._step()
        except BaseException as e:       # never die silently: fail every request, then stop
            log.exception("engine loop failed")
            self.error = e
            self._fail_all(f"engine failure: {type(e).__name__}: {e}", 500)

    def _handle(self, cmd: tuple) -> None:
        kind, arg = cmd
        if kind == "add":
            stream = self._streams.get(arg.request_id)
            if stream is None:            # aborted before it was handed over
                return
            self.engine.add_request(arg)
            self._progress[arg.request_id] = (0, time.perf_counter())
        elif kind == "abort":
            self._abort(arg)
        elif kind == "cancel_all":
            self._fail_all(arg, 503)

    def _abort(self, request_id: str, notify: bool = True) -> None:
        out = self.engine.abort_request(request_id)
        stream = self._streams.pop(request_id, None)
        self._progress.pop(request_id, None)
        if out is not None:
            self.num_aborted += 1
            if self.metrics:
                self.metrics.on_finished(out)
            if stream is not None and notify:
                stream.put_threadsafe(out)

    def _fail_all(self, message: str, status: int) -> None:
        for rid, stream in list(self._streams.items()):
            try:
                self._abort(rid, notify=False)
            except Exception:             # the engine may be broken; still tell the client
                log.exception("abort of %s failed", rid)
            stream.put_threadsafe(StreamError(message, status))
        self._streams.clear()

    def _step(self) -> None:
        eng = self.engine
        try:
            outs = eng.step()
        except TensorParallelError:
            raise                         # the ranks are stopped: the loop ends, /health says why
        except Exception as e:
            log.exception("engine step failed; failing the requests in flight")
            self._fail_all(f"engine step failed: {type(e).__name__}: {e}", 500)
            return
        self.num_steps += 1
        now = time.perf_counter()
        for out in outs:
            seen, last = self._progress.get(out.request_id, (0, now))
            n = out.num_output_tokens
            if self.metrics and n > seen:
                self.metrics.on_tokens(out, seen, n - seen, now - last)
            self._progress[out.request_id] = (n, now)
            stream = self._streams.get(out.request_id)
            if out.finished:
                self._streams.pop(out.request_id, None)
                self._progress.pop(out.request_id, None)
                if self.metrics:
                    self.metrics.on_finished(out)
            if stream is not None:
                stream.put_threadsafe(out)
        if not outs and not eng.num_running() and eng.num_waiting():
            time.sleep(0.005)             # nothing admitted (cannot happen for valid requests)
