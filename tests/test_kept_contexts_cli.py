"""`ask --dir --keep-context` as a user runs it: the second question, in a new process, loads
the repository's KV instead of prefilling it, and answers exactly as a cold run; kept contexts
that are damaged or from another setup are refused, rebuilt and the answer still given."""
from __future__ import annotations

import json

import pytest

from cli_runner import run_cli, run_cli_subprocess
from document_fixtures import make_repository

QUESTION = "Which function scales items by 9?"


def ask_json(cwd, *args, new_process: bool = False):
    """The JSON answer and the stderr of `ask ARGS`: in this process, or in a new one."""
    run = run_cli_subprocess if new_process else run_cli
    r = run("ask", *args, "--max-tokens", "12", "--json", QUESTION, cwd=cwd)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), r.stderr


@pytest.mark.exclusive                  # a warm start against a cold one
def test_the_second_question_in_a_new_process_loads_the_kept_repository(tmp_path):
    make_repository(tmp_path / "repo")
    first, err1 = ask_json(tmp_path, "--dir", "repo", "--keep-context", "repo")
    assert first["context"]["kept"] and first["context"]["tiers"] == ["ram", "disk"], err1
    assert first["num_prompt_tokens"] > 6000
    assert first["metrics"]["num_cached_tokens"] == 0

    second, err2 = ask_json(tmp_path, "--dir", "repo", "--keep-context", "repo", new_process=True)
    ctx = second["context"]
    assert ctx["loaded_from"] == "ram" and ctx["tokens"] >= first["num_prompt_tokens"] - 400, err2
    assert second["metrics"]["num_cached_tokens"] == ctx["tokens"]
    warm_ttft = ctx["load_s"] + second["metrics"]["ttft_s"]
    assert warm_ttft <= 0.2 * first["metrics"]["ttft_s"], (warm_ttft, first["metrics"]["ttft_s"])
    assert second["token_ids"] == first["token_ids"]       # the first run was the cold run

    rows = context_cli("list", "--json")["contexts"]
    assert [(r["name"], r["num_tokens"], sorted(r["tiers"])) for r in rows] == \
        [("repo", ctx["tokens"], ["disk", "ram"])]
    context_cli("rm", "repo")
    assert context_cli("list", "--json")["contexts"] == []


def context_cli(*args):
    r = run_cli("context", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout) if "--json" in args else r.stdout


def test_damaged_and_foreign_kept_contexts_are_rebuilt_with_a_warning(tmp_path, monkeypatch):
    from turboctx.contexts.store import ContextStore
    monkeypatch.chdir(tmp_path)
    doc = tmp_path / "notes.txt"
    doc.write_text(" ".join(f"Parcel {1000 + 37 * i} left the harbour at {i % 12 + 1} o'clock."
                            for i in range(30)))
    cold, _ = ask_json(tmp_path, "--file", "notes.txt", "--keep-context", "notes")
    store = ContextStore()
    for tier, folder, _ in store.locations("notes"):     # one flipped bit in every copy
        kv = folder / "kv.bin"
        data = bytearray(kv.read_bytes())
        data[len(data) // 3] ^= 0x01
        kv.write_bytes(bytes(data))
    rebuilt, err = ask_json(tmp_path, "--file", "notes.txt", "--keep-context", "notes")
    assert "damaged" in err and "checksum" in err and "Traceback" not in err
    assert rebuilt["token_ids"] == cold["token_ids"] and rebuilt["context"]["kept"]
    assert rebuilt["metrics"]["num_cached_tokens"] == 0

    other, err = ask_json(tmp_path, "--file", "notes.txt", "--keep-context", "notes", "--dca")
    assert "another setup" in err and "dca" in err, err
    assert other["metrics"]["num_cached_tokens"] == 0 and other["context"]["kept"]

    bad = run_cli_subprocess("ask", "--file", "notes.txt", "--keep-context", "../up", QUESTION, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: context name"), bad.stderr
