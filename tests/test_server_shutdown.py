"""Graceful shutdown of a live server: the shared one, which this test ends (a test after it that
needs a server gets a new one)."""
from __future__ import annotations

import json
import signal
import time

import pytest

from server_fixtures import MODEL, post

PROMPT = "The capital of France is"
COMPL = "/v1/completions"


@pytest.fixture
def own_server(shared_server):
    srv = shared_server.take()
    yield srv
    if srv.proc.poll() is None:
        srv.stop()


def test_sigterm_cancels_a_streaming_request_with_an_error_event(own_server):
    assert_sigterm_cancels_a_stream(own_server)


def assert_sigterm_cancels_a_stream(server) -> None:
    """SIGTERM while a long request streams -> it gets an error event and [DONE], the server exits 0."""
    body = {"model": MODEL, "max_tokens": 1500, "temperature": 0, "ignore_eos": True,
            "prompt": PROMPT, "stream": True}
    r = post(server, COMPL, body, stream=True)
    lines = r.iter_lines(decode_unicode=True)
    first = next(line for line in lines if line)
    assert first.startswith("data: {")
    server.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    err = json.loads(rest[-2][len("data: "):])
    assert "shutting down" in err["error"]["message"]
    assert server.proc.wait(30) == 0, server.log()
    assert time.monotonic() - t0 < 20
