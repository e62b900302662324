"""OpenAITarget against a tiny in-process OpenAI-compatible server; the real tokenizer."""
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from turboctx.eval import niah, passkey, ruler
from turboctx.eval.runner import run_samples
from turboctx.eval.targets import OpenAITarget, TargetUnavailable
from eval_doubles import WordTokenizer

LIMIT = 1500  # the fake server's context limit, in WordTokenizer tokens


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def _send(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send(200, {"object": "list", "data": [{"id": "fake", "object": "model", "created": 0,
                                                       "owned_by": "me"}]})

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = req["messages"][-1]["content"] if "messages" in req else req["prompt"]
        if len(WordTokenizer().encode(prompt)) + req["max_tokens"] > LIMIT:
            return self._send(400, {"error": {"message": "This model's maximum context length is "
                                              f"{LIMIT} tokens", "type": "invalid_request_error"}})
        m = re.search(r"The pass key is (\d+)\.", prompt)
        text = " " + (m.group(1) if m else "?")
        base = {"id": "x", "created": 0, "model": "fake",
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        if "messages" in req:
            self.server.chat_calls += 1
            return self._send(200, {**base, "object": "chat.completion", "choices": [
                {"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": text}}]})
        self._send(200, {**base, "object": "text_completion", "choices": [
            {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}]})


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.chat_calls = 0
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1", srv
    srv.shutdown()


@pytest.mark.parametrize("chat", [False, True])
def test_openai_target_scores_and_errors(server, tmp_path, chat):
    url, srv = server
    tok = WordTokenizer()
    target = OpenAITarget(url, "k", chat=chat, concurrency=3, tokenizer=tok)
    samples = passkey.generate([1024, 2048], [0.0, 0.5], 2, 0, target.count_tokens)
    before = srv.chat_calls
    summary = run_samples(samples, target, tmp_path, progress=False)
    t = summary["tasks"]["passkey"]
    assert t["by_length"]["1024"] == {"score": 100.0, "n": 4}
    assert t["errors"] == 4 and t["n"] == 4  # the 2K prompts are over the server's limit
    recs = [json.loads(l) for l in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert all("PromptTooLong" in r["error"] for r in recs if r["length"] == 2048)
    assert (srv.chat_calls > before) == chat


def test_openai_target_down():
    target = OpenAITarget("http://127.0.0.1:9/v1", "k", tokenizer=WordTokenizer(), timeout=2)
    with pytest.raises(TargetUnavailable, match="cannot reach"):
        target.generate(["hi"], 4)


@pytest.fixture(scope="module")
def real_tok():
    try:
        from turboctx.weights import open_checkpoint
        return open_checkpoint(None).tokenizer
    except Exception as e:  # the engine's loader or the default model is not there
        pytest.skip(f"default model tokenizer unavailable: {e}")


def test_lengths_with_default_model_tokenizer(real_tok):
    count = lambda t: len(real_tok.encode(t))
    for task in ruler.DEFAULT_TASKS:   # all 11 tasks that need no download
        s = ruler.generate(task, 4096, 1, 42, count, lambda b, p: b + p)[0]
        assert 0.98 * 4096 <= s.prompt_tokens + s.max_tokens <= 4096, task
        assert s.prompt_tokens == count(s.prompt)
    for s in passkey.generate([1024, 8192], [0.5], 1, 0, count) + niah.generate(
            [1024, 8192], [0.0, 1.0], 1, 0, count):
        assert 0.98 * s.length <= s.prompt_tokens + s.max_tokens <= s.length, (s.task, s.length)
    wrap = lambda b, p: real_tok.apply_chat_template([{"role": "user", "content": b}]) + p
    s = ruler.generate("niah_single_2", 4096, 1, 42, count, wrap)[0]
    assert s.prompt.startswith("<|im_start|>") and 0.98 * 4096 <= s.prompt_tokens + 128 <= 4096
