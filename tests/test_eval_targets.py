"""OpenAITarget against a tiny in-process OpenAI-compatible server: what it sends, how it counts
tokens (the server's /tokenize, or the served model's --tokenizer), errors; the real tokenizer."""
import json

import pytest

from turboctx.eval import niah, passkey, ruler
from turboctx.eval.runner import run_samples
from turboctx.eval.targets import (OpenAITarget, TargetUnavailable, TokenizerMismatch,
                                   TokenizerUnavailable)
from eval_doubles import OracleTarget, WordTokenizer
from fake_openai_server import MODEL, CharTokenizer, fake_server

LIMIT = 1500  # the fake server's context limit, in WordTokenizer tokens


def test_openai_target_scores_and_errors(tmp_path):
    with fake_server(limit=LIMIT) as srv:
        target = OpenAITarget(srv.url, "k", concurrency=3, tokenizer=WordTokenizer())
        samples = passkey.generate([1024, 2048], [0.0, 0.5], 2, 0, target.count_tokens)
        summary = run_samples(samples, target, tmp_path, progress=False)
        assert not srv.chats and len(srv.completions) == 8
    t = summary["tasks"]["passkey"]
    # the 2K prompts are over the server's limit: errors, and misses
    assert t["errors"] == 4 and t["n"] == 8 and summary["overall"] == 50.0
    assert t["by_length"]["1024"] == {"score": 100.0, "n": 4, "errors": 0}
    assert t["by_length"]["2048"] == {"score": 0.0, "n": 4, "errors": 4}
    recs = [json.loads(l) for l in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert all("PromptTooLong" in r["error"] for r in recs if r["length"] == 2048)


def test_openai_target_down():
    target = OpenAITarget("http://127.0.0.1:9/v1", "k", tokenizer=WordTokenizer(), timeout=2)
    with pytest.raises(TargetUnavailable, match="cannot reach"):
        target.generate(["hi"], 4)


def test_counts_come_from_the_servers_tokenize():
    """No --tokenizer: each count is the server's, for the served model; never a default model's."""
    with fake_server(tokenizer=CharTokenizer()) as srv:
        target = OpenAITarget(srv.url, "k")
        text = "The pass key is 12345. " * 20
        assert target.count_tokens(text) == srv.count(text) == len(text) // 4 + 1
        assert target.count_tokens(text) == srv.count(text)      # cached: no second request
        sent = [r for r in srv.tokenizes if r["prompt"] == text]
        assert sent == [{"model": MODEL, "prompt": text, "add_special_tokens": True}]
        assert target.encode(text) == CharTokenizer().encode(text)
        samples = passkey.generate([1024], [0.5], 2, 0, target.count_tokens)
        for s in samples:   # the full prompt, fitted by the server's own count
            assert s.prompt_tokens == srv.count(s.prompt)
            assert 0.98 * 1024 <= s.prompt_tokens + s.max_tokens <= 1024


def test_binary_search_over_http_builds_the_local_prompts():
    """Counting through /tokenize (cached) fits every prompt exactly as a local count would."""
    tok = WordTokenizer()
    local = OracleTarget(tok)
    with fake_server(tokenizer=tok) as srv:
        remote = OpenAITarget(srv.url, "k")
        for build in (lambda t: passkey.generate([1024, 2048], [0.0, 0.7], 2, 5, t.count_tokens),
                      lambda t: ruler.generate("niah_single_2", 2048, 2, 5, t.count_tokens,
                                               lambda b, p: b + p),
                      lambda t: ruler.generate("cwe", 4096, 2, 5, t.count_tokens,
                                               lambda b, p: b + p)):
            a, b = build(local), build(remote)
            assert [(s.prompt, s.prompt_tokens) for s in a] == [(s.prompt, s.prompt_tokens) for s in b]
        assert srv.tokenizes   # the remote side did count through the server


def test_no_tokenize_and_no_tokenizer_is_an_error_naming_the_flag():
    with fake_server(has_tokenize=False) as srv:
        target = OpenAITarget(srv.url, "k")
        with pytest.raises(TokenizerUnavailable, match="no /tokenize.*pass --tokenizer"):
            target.count_tokens("hello")
        with pytest.raises(TokenizerUnavailable, match="--tokenizer"):
            target.wrap("body", " prefix", chat=True)
        # with the served model's tokenizer, counts are local and nothing is checked
        local = OpenAITarget(srv.url, "k", tokenizer=WordTokenizer())
        s = passkey.generate([1024], [0.5], 1, 0, local.count_tokens)
        assert local.count_tokens("a b c") == 3 and local.confirm_prompt_tokens(s) == 0


def test_tokenizer_checked_once_per_prompt_against_the_server():
    with fake_server(tokenizer=WordTokenizer()) as srv:
        target = OpenAITarget(srv.url, "k", tokenizer=WordTokenizer())
        samples = passkey.generate([1024], [0.0, 1.0], 2, 0, target.count_tokens)
        assert not srv.tokenizes                         # the search counted locally
        assert target.confirm_prompt_tokens(samples) == 4
        assert sorted(r["prompt"] for r in srv.tokenizes if r["prompt"] != "a") == sorted(
            s.prompt for s in samples)                   # one request per prompt (+ the probe)
    with fake_server(tokenizer=CharTokenizer()) as srv:   # --tokenizer is another model's
        target = OpenAITarget(srv.url, "k", tokenizer=WordTokenizer())
        samples = passkey.generate([1024], [0.5], 1, 0, target.count_tokens)
        with pytest.raises(TokenizerMismatch, match="not the served model's tokenizer"):
            target.confirm_prompt_tokens(samples)


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
