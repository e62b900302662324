"""A tiny OpenAI-compatible server in a thread, for the remote target's tests: /v1/models,
/v1/completions (answers as OracleTarget reads the prompt, refuses prompts over `limit` of its
tokenizer's tokens), /v1/chat/completions, and vLLM's POST /tokenize (off with
`has_tokenize = False`: then 404). It records every request, so tests can assert what a
remote run sent."""
from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

from eval_doubles import OracleTarget, WordTokenizer

MODEL = "fake"


class CharTokenizer:
    """A tokenizer that is not WordTokenizer: one token per 4 characters (ids by position)."""

    def encode(self, text: str) -> list[int]:
        return list(range(len(text) // 4 + 1))


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tokenizer=None, limit: int = 10 ** 9, has_tokenize: bool = True):
        super().__init__(("127.0.0.1", 0), Handler)
        self.tokenizer = tokenizer or WordTokenizer()
        self.limit = limit
        self.has_tokenize = has_tokenize
        self.completions: list[dict] = []      # request bodies, in arrival order
        self.chats: list[dict] = []
        self.tokenizes: list[dict] = []
        self._lock = threading.Lock()
        self._oracle = OracleTarget(self.tokenizer)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text))


class Handler(BaseHTTPRequestHandler):
    server: FakeServer

    def log_message(self, *a):
        pass

    def _send(self, code: int, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path != "/v1/models":
            return self._send(404, {"detail": "Not Found"})
        self._send(200, {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0,
                                                       "owned_by": "me"}]})

    def do_POST(self):
        srv = self.server
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/tokenize":
            if not srv.has_tokenize:
                return self._send(404, {"detail": "Not Found"})
            with srv._lock:
                srv.tokenizes.append(req)
            ids = srv.tokenizer.encode(req["prompt"])
            return self._send(200, {"count": len(ids), "max_model_len": srv.limit, "tokens": ids})
        if self.path not in ("/v1/completions", "/v1/chat/completions"):
            return self._send(404, {"detail": "Not Found"})
        chat = "messages" in req
        prompt = req["messages"][-1]["content"] if chat else req["prompt"]
        with srv._lock:
            (srv.chats if chat else srv.completions).append(req)
        if srv.count(prompt) + req["max_tokens"] > srv.limit:
            return self._send(400, {"error": {"message": "This model's maximum context length is "
                                              f"{srv.limit} tokens", "type": "invalid_request_error"}})
        text = srv._oracle.answer(prompt)
        base = {"id": "x", "created": 0, "model": MODEL,
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        if chat:
            return self._send(200, {**base, "object": "chat.completion", "choices": [
                {"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": text}}]})
        self._send(200, {**base, "object": "text_completion", "choices": [
            {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}]})


@contextlib.contextmanager
def fake_server(**kw) -> Iterator[FakeServer]:
    srv = FakeServer(**kw)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
