"""`turboctx eval ... --base-url`: a remote run sends the very prompt a local run builds (chat
template, answer prefix after the assistant header), honours --template, counts what the
server sees with the served model's tokenizer, and says so; bad combinations are one clear
error. The server is tests/fake_openai_server.py; --tokenizer SPEC loads a WordTokenizer."""
import json
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from turboctx.eval import cli
from eval_doubles import OracleTarget, WordTokenizer
from fake_openai_server import CharTokenizer, fake_server

RULER_ARGS = ["ruler", "--lengths", "2k", "--samples", "2", "--tasks", "niah_single_1,vt",
              "--save-prompts"]


@pytest.fixture
def served_tokenizer(monkeypatch):
    """--tokenizer SPEC (any spec) loads the WordTokenizer, the fake server's own."""
    monkeypatch.setattr("turboctx.weights.open_checkpoint",
                        lambda spec=None: SimpleNamespace(tokenizer=WordTokenizer()))


def _invoke(*args):
    return CliRunner().invoke(cli.eval_app, [str(a) for a in args])


def _records(out):
    return [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]


def test_remote_chat_run_sends_the_local_prompt(tmp_path, monkeypatch, served_tokenizer):
    with monkeypatch.context() as m:       # the local run: the same tokenizer, in process
        m.setattr(cli, "make_target", lambda *a, **k: OracleTarget(WordTokenizer()))
        r = _invoke(*RULER_ARGS, "--template", "chat", "--out", tmp_path / "local")
    assert r.exit_code == 0, r.output
    local = _records(tmp_path / "local")
    with fake_server() as srv:
        r = _invoke(*RULER_ARGS, "--base-url", srv.url, "--chat", "--tokenizer", "served",
                    "--out", tmp_path / "remote")
        assert r.exit_code == 0, r.output
        sent = [c["prompt"] for c in srv.completions]
        assert not srv.chats                  # one form: the whole text to /v1/completions
    assert sorted(sent) == sorted(x["prompt"] for x in local) and len(sent) == 4
    for x in local:   # the answer prefix after the assistant header, as a local chat run has it
        body, _, after = x["prompt"].rpartition("\n<|assistant|>\n")
        assert body.startswith("<|user|>\n") and after.startswith(" ") and after.strip()
        assert "<|assistant|>" not in after
    remote = {x["prompt_sha256"]: x for x in _records(tmp_path / "remote")}
    for x in local:   # the same prompt, the same token count and the same score
        assert remote[x["prompt_sha256"]]["prompt_tokens"] == x["prompt_tokens"]
        assert remote[x["prompt_sha256"]]["score"] == x["score"] == 1.0
    assert "sent whole to" in r.output and "/completions" in r.output


def test_template_chat_is_honoured_without_chat(tmp_path, served_tokenizer):
    with fake_server() as srv:
        r = _invoke("passkey", "--lengths", "1k", "--depths", "0.5", "--trials", "2",
                    "--base-url", srv.url, "--template", "chat", "--tokenizer", "served",
                    "--out", tmp_path / "a")
        assert r.exit_code == 0, r.output
        assert len(srv.completions) == 2
        for c in srv.completions:
            assert c["prompt"].startswith("<|user|>\nThere is an important info")
            assert c["prompt"].endswith("The pass key is\n<|assistant|>\n")
        r = _invoke("niah", "--lengths", "1k", "--depths", "0.5", "--base-url", srv.url,
                    "--template", "meta-chat", "--tokenizer", "served", "--out", tmp_path / "b")
        assert r.exit_code == 0, r.output
        assert srv.completions[-1]["prompt"].startswith("[INST] Below is a long text.")


@pytest.mark.parametrize("args, words", [
    (["--template", "chat"], "--tokenizer"),                 # the template needs the tokenizer
    (["--chat"], "--tokenizer"),
    (["--chat", "--template", "meta-chat", "--tokenizer", "x"], "--chat means --template chat"),
])
def test_remote_chat_template_needs_the_served_tokenizer(tmp_path, args, words):
    with fake_server() as srv:
        r = _invoke("passkey", "--lengths", "1k", "--base-url", srv.url, *args,
                    "--out", tmp_path)
        assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output, r.output
        assert not srv.completions and not srv.chats


def test_remote_lengths_count_what_the_server_sees(tmp_path):
    """No --tokenizer: the server's /tokenize counts the full wrapped prompt."""
    with fake_server(tokenizer=CharTokenizer()) as srv:
        r = _invoke(*RULER_ARGS, "--base-url", srv.url, "--template", "meta-chat",
                    "--out", tmp_path)
        assert r.exit_code == 0, r.output
        assert "counted by the server's /tokenize" in r.output
        recs = _records(tmp_path)
        for x in recs:
            assert x["prompt"].startswith("[INST] ")
            assert x["prompt_tokens"] == srv.count(x["prompt"])
            total = x["prompt_tokens"] + (128 if x["task"].startswith("niah") else 30)
            assert 0.98 * 2048 <= total <= 2048
        assert {c["prompt"] for c in srv.completions} == {x["prompt"] for x in recs}


def test_remote_without_tokenize_or_tokenizer_is_one_clear_error(tmp_path):
    with fake_server(has_tokenize=False) as srv:
        r = _invoke("passkey", "--lengths", "1k", "--base-url", srv.url, "--out", tmp_path)
        assert r.exit_code == 2, r.output
        assert "no /tokenize" in r.output and "--tokenizer" in r.output
        assert "Traceback" not in r.output and not srv.completions


def test_remote_tokenizer_of_another_model_is_refused(tmp_path, served_tokenizer):
    with fake_server(tokenizer=CharTokenizer()) as srv:
        r = _invoke("passkey", "--lengths", "1k", "--base-url", srv.url, "--tokenizer", "other",
                    "--out", tmp_path)
        assert r.exit_code == 2 and "not the served model's tokenizer" in r.output, r.output
        assert not srv.completions             # refused before any prompt was sent


def test_remote_only_flags_without_base_url(tmp_path):
    r = _invoke("passkey", "--lengths", "256", "--depths", "0.5", "--trials", "1",
                "--tokenizer", "x", "--out", tmp_path)
    assert r.exit_code == 2 and "--base-url" in r.output and "Traceback" not in r.output
