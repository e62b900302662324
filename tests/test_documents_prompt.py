"""Documents into token ids: prefix_ids do not depend on the question, prompt_ids = prefix_ids +
question_ids, each document's count is its own block's, and the ids spell exactly the chat
prompt. A book (the ASV) and this project's source through `ask --dry-run`."""
from __future__ import annotations

import json

import pytest

from cli_runner import SRC, run_cli
from document_fixtures import default_tokenizer
from turboctx.documents import Document, build_document_prompt, conversation_ids, read_inputs
from turboctx.documents.prompt import documents_text

DOCS = [Document("notes/a.txt", "The lamp is kept in the north tower.\n", "text"),
        Document("b.py", "def lamp():\n    return 'north'", "text"),
        Document("c.pdf", "[page 1]\nA page.\n", "pdf")]


def rendered_prompt(tokenizer, documents, question: str, system: str | None = None) -> str:
    """The chat prompt as text, rendered in one go with the real content."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": documents_text(documents) + "\nQuestion: " + question}]
    return tokenizer.apply_chat_template(messages)


def check_ids_spell_the_prompt(tokenizer, prompt, documents, question: str) -> None:
    """The ids decode to the prompt rendered in one go, and the per-document counts cut them
    exactly at the documents' blocks."""
    text = rendered_prompt(tokenizer, documents, question)
    assert tokenizer.decode(prompt.prompt_ids, skip_special_tokens=False) == text
    head = len(prompt.prefix_ids) - prompt.document_tokens - len(tokenizer.encode("\nQuestion:"))
    start = head
    for doc, n in zip(documents, prompt.per_document_tokens):
        block = tokenizer.decode(prompt.prompt_ids[start:start + n], skip_special_tokens=False)
        header = f"=== {doc.name} ===\n" if len(documents) > 1 else ""     # one document: no header
        assert block.startswith(header) and block.rstrip("\n") == f"{header}{doc.text}".rstrip("\n")
        start += n
    assert sum(prompt.per_document_tokens) + prompt.template_tokens == len(prompt.prompt_ids)


def test_two_questions_share_the_prefix_exactly():
    tok = default_tokenizer()
    one = build_document_prompt(tok, DOCS, "Where is the lamp kept?")
    two = build_document_prompt(tok, DOCS, "\n(and) what does lamp() return?  ")
    assert one.prefix_ids == two.prefix_ids and one.question_ids != two.question_ids
    assert one.prompt_ids == one.prefix_ids + one.question_ids
    assert tok.decode(one.question_ids, skip_special_tokens=False) == (
        " Where is the lamp kept?<|im_end|>\n<|im_start|>assistant\n")
    check_ids_spell_the_prompt(tok, one, DOCS, "Where is the lamp kept?")
    # here the split tokenization is the whole prompt's own tokenization
    assert one.prompt_ids == tok.encode(rendered_prompt(tok, DOCS, "Where is the lamp kept?"))
    assert build_document_prompt(tok, DOCS, "x", system="Be brief.").prefix_ids != one.prefix_ids


def test_special_token_strings_in_a_document_are_text():
    tok = default_tokenizer()
    docs = [Document("template.jinja", "{{ '<|im_end|>' }} and <|im_start|>user\n", "text")]
    prompt = build_document_prompt(tok, docs, "What does it print?")
    head = len(tok.encode(tok.apply_chat_template([{"role": "user", "content": "\u27e6"}]).split("\u27e6")[0]))
    block = prompt.prefix_ids[head:head + prompt.per_document_tokens[0]]
    specials = {tok.token_to_id("<|im_end|>"), tok.token_to_id("<|im_start|>")}
    assert not specials & set(block)
    assert tok.decode(block, skip_special_tokens=False) == docs[0].text      # one document: no header
    check_ids_spell_the_prompt(tok, prompt, docs, "What does it print?")


def test_a_conversation_keeps_the_documents_as_its_prefix():
    tok = default_tokenizer()
    base = build_document_prompt(tok, DOCS, "")
    first = [{"role": "user", "content": "Where is the lamp kept?"}]
    assert conversation_ids(tok, base, first) == build_document_prompt(tok, DOCS, "Where is the lamp kept?").prompt_ids
    turns = first + [{"role": "assistant", "content": "In the north tower."},
                     {"role": "user", "content": "And what does lamp() return?"}]
    ids = conversation_ids(tok, base, turns)
    assert ids[:len(base.prefix_ids)] == base.prefix_ids
    assert tok.decode(ids[len(base.prefix_ids):], skip_special_tokens=False) == (
        " Where is the lamp kept?<|im_end|>\n<|im_start|>assistant\nIn the north tower.<|im_end|>\n"
        "<|im_start|>user\nAnd what does lamp() return?<|im_end|>\n<|im_start|>assistant\n")


def ask_dry_run_json(*args: str, cwd=None):
    r = run_cli("ask", "--dry-run", "--json", *args, cwd=cwd)
    assert "Traceback" not in r.stderr, r.stderr
    return r, json.loads(r.stdout)["plan"]


def test_a_book_counts_exactly_and_is_refused_by_how_much(tmp_path, monkeypatch):
    """The whole ASV (about 1.1M tokens) in the default model (8K): the plan counts its tokens
    as the prompt has them, and the command says by how much it is over and what would fit it."""
    from turboctx.eval.haystack import bible_raw_text
    book = tmp_path / "asv.txt"
    book.write_text(bible_raw_text(), encoding="utf-8")
    question = "Who built the ark?"
    r, plan = ask_dry_run_json("--file", "asv.txt", question, cwd=tmp_path)
    assert r.returncode == 1
    tok = default_tokenizer()
    monkeypatch.chdir(tmp_path)
    docs = read_inputs(["asv.txt"]).documents
    prompt = build_document_prompt(tok, docs, question)
    assert plan["prompt_tokens"] == len(prompt.prompt_ids) > 1_000_000
    assert [d["tokens"] for d in plan["documents"]] == list(prompt.per_document_tokens)
    assert plan["template_tokens"] == prompt.template_tokens
    check_ids_spell_the_prompt(tok, prompt, docs, question)
    over = len(prompt.prompt_ids) + 256 - 8192
    error = r.stderr.strip()
    assert len(error.splitlines()) == 1 and error.startswith("error: the documents do not fit: ")
    assert f"is {over:,} tokens over max_model_len 8,192" in error
    assert plan["over_max_model_len"] == over and "--dca" in error and "--max-model-len" in error


def test_this_projects_source_counts_exactly(monkeypatch):
    """`ask --dry-run --dir src/turboctx`: every Python file is there, in path order, and the
    plan's counts are the prompt's."""
    question = "Where is the KV cache allocated?"
    r, plan = ask_dry_run_json("--dir", "src/turboctx", question, cwd=SRC.parent)
    assert r.returncode == 1 and "over max_model_len" in r.stderr      # about 230K tokens
    names = [d["name"] for d in plan["documents"]]
    python_files = sorted(p.relative_to(SRC.parent).as_posix() for p in (SRC / "turboctx").rglob("*.py")
                          if "__pycache__" not in p.parts)
    assert [n for n in names if n.endswith(".py")] == sorted(python_files, key=lambda p: p.split("/"))
    tok = default_tokenizer()
    monkeypatch.chdir(SRC.parent)
    docs = read_inputs(directories=["src/turboctx"]).documents
    prompt = build_document_prompt(tok, docs, question)
    assert names == [d.name for d in docs]
    assert [d["tokens"] for d in plan["documents"]] == list(prompt.per_document_tokens)
    assert plan["prompt_tokens"] == len(prompt.prompt_ids) == sum(prompt.per_document_tokens) + plan["template_tokens"]
    check_ids_spell_the_prompt(tok, prompt, docs, question)


@pytest.mark.parametrize("question", ["", "   "])
def test_the_prefix_is_the_same_without_a_question(question):
    tok = default_tokenizer()
    assert build_document_prompt(tok, DOCS, question).prefix_ids == build_document_prompt(tok, DOCS, "q").prefix_ids
