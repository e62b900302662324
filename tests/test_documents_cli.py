"""`turboctx ask` / `turboctx chat` with documents: bad input is one clear line (exit 2), documents
that do not fit stop before any weight loads (exit 1), the real path answers about a repository,
and a chat keeps the documents as the prefix of every turn."""
from __future__ import annotations

import builtins
import io
import re
import sys
from types import SimpleNamespace

import pytest

from cli_runner import run_cli
from document_fixtures import default_tokenizer, write_pdf
from turboctx.cli import main


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("The lamp is in the north tower.\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "a.out").write_bytes(b"\x7fELF\x00\x01")
    (tmp_path / "bin" / "Cargo.lock").write_text("# lock\n")
    write_pdf(tmp_path / "scan.pdf", [[]])
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    return tmp_path


@pytest.mark.parametrize("args, words", [
    (["ask", "Where?", "--file", "missing.txt"], "error: file 'missing.txt' does not exist"),
    (["ask", "Where?", "--file", "latin1.txt"], "error: file 'latin1.txt' is not UTF-8 text (byte 0xe9 at offset 3"),
    (["ask", "Where?"], "error: give the documents to ask about: --file PATH"),
    (["ask", "Where?", "--file", "-"], "error: stdin is empty"),
    (["ask", "Where?", "--dir", "bin"],
     "error: nothing readable in directory 'bin': skipped 2 files: 1 binary, 1 lock file"),
    (["ask", "Where?", "--dir", "nowhere"], "error: directory 'nowhere' does not exist"),
    (["ask", "Where?", "-f", "a.txt", "--file", "scan.pdf"], "error: PDF 'scan.pdf' has no text layer"),
    (["ask", "  ", "--file", "a.txt"], "error: the question is empty"),
    (["chat", "--file", "-"], "error: chat reads the conversation from stdin"),
])
def test_bad_input_is_one_clear_line(inputs, capsys, args, words):
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and err.startswith(words), err


def test_documents_that_do_not_fit_stop_before_the_weights_load(inputs, capsys, monkeypatch):
    import turboctx.cli.generate as generate
    monkeypatch.setattr(generate, "load_llm", lambda options: pytest.fail("weights were loaded"))
    with pytest.raises(SystemExit) as e:
        main(["ask", "Where is the lamp?", "--file", "a.txt", "--max-model-len", "48", "--max-tokens", "8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1 and err[0].startswith("plan: 1 document, ")
    assert err[-1].startswith("error: the documents do not fit: ") and "over max_model_len 48" in err[-1]
    assert "--max-model-len 1k" in err[-1]


def test_ask_about_a_repository_end_to_end(tmp_path):
    """The real path: read, plan, load, prefill the token ids, stream, footer."""
    (tmp_path / "tiny" / "src").mkdir(parents=True)
    (tmp_path / "tiny" / "README.md").write_text("The lamp service reports how bright the lamp is.\n")
    (tmp_path / "tiny" / "src" / "lamp.py").write_text("def brightness():\n    return 42\n")
    r = run_cli("ask", "--dir", "tiny", "--max-tokens", "8", "--price-per-gpu-hour", "2",
                "What does brightness() return?", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
    planned = re.search(r"^plan: 2 documents, (\d+) prompt tokens", r.stderr, re.M)
    footer = re.search(r"^\[TTFT \d+\.\d+ s, (\d+) prompt tokens, (\d) generated, .*cost \$\d+\.\d{4} "
                       r"\(\d+\.\d s at \$2\.00/GPU-hour\)\]$", r.stderr, re.M)
    assert planned and footer, r.stderr
    assert planned.group(1) == footer.group(1) and 1 <= int(footer.group(2)) <= 8


class FakeLLM:
    """Records the prompts a chat sends; answers 'ok' in one step."""

    def __init__(self):
        self.prompts = []

    def stream(self, prompt, params, chat, use_tqdm=None):
        from turboctx import RequestMetrics
        self.prompts.append(prompt)
        yield SimpleNamespace(text="ok", finish_reason="stop", metrics=RequestMetrics(
            num_prompt_tokens=len(prompt), num_generated_tokens=1, ttft_s=0.25, e2e_s=0.5))


def test_chat_keeps_the_documents_as_every_turns_prefix(monkeypatch, capsys):
    from turboctx.cli.chat import chat_loop
    from turboctx.cli.document_options import PreparedDocuments
    from turboctx.documents import Document, build_document_prompt, conversation_ids
    tok = default_tokenizer()
    docs = [Document("a.txt", "The lamp is in the north tower.\n", "text")]
    prepared = PreparedDocuments(tok, build_document_prompt(tok, docs, ""), plan=None)
    lines = iter(["Where is the lamp?", "Which tower?", "/reset", "Again?", "/exit"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(lines))
    llm = FakeLLM()
    chat_loop(llm, None, None, prepared, price_per_gpu_hour=2.0)
    prefix = prepared.prompt.prefix_ids
    assert len(llm.prompts) == 3 and all(p[:len(prefix)] == prefix for p in llm.prompts)
    assert llm.prompts[0] == build_document_prompt(tok, docs, "Where is the lamp?").prompt_ids
    assert llm.prompts[1][:len(llm.prompts[0])] == llm.prompts[0]      # the conversation goes on
    assert llm.prompts[2] == conversation_ids(tok, prepared.prompt, [{"role": "user", "content": "Again?"}])
    out = capsys.readouterr()
    assert out.out.count("ok\n") == 3
    footers = [line for line in out.err.splitlines() if line.startswith("[TTFT 0.25 s")]
    assert len(footers) == 3 and all("cost $0.0003 (0.5 s at $2.00/GPU-hour)" in f for f in footers)
