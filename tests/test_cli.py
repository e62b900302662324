"""The `turboctx` command line as a user runs it: the exit code, stdout and stderr. In this process
(cli_runner.run_cli) but for `generate`, which also runs as a new process (the real entry point)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cli_runner import run_cli as run
from cli_runner import run_cli_subprocess


def test_info_json():
    r = run("info", "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["family"] == "llama" and plan["trained context"] == 8192
    assert plan["KV bytes per token"] == 2 * 30 * 3 * 64 * 4      # fp32 on the CPU
    assert plan["max tokens that fit"] >= 8192


def test_generate_json_and_ask(tmp_path):
    r = run_cli_subprocess("generate", "The capital of France is", "--max-tokens", "6", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert "Paris" in out["text"] and out["metrics"]["ttft_s"] > 0
    doc = tmp_path / "doc.txt"
    doc.write_text("The secret project is called Bluebird. It started in 2019 in Lisbon.")
    r = run("ask", "--file", str(doc), "What is the secret project called?", "--max-tokens", "30")
    assert r.returncode == 0, r.stderr
    assert "Bluebird" in r.stdout


def test_chat_reads_stdin():
    r = run("chat", "--temperature", "0", "--max-tokens", "12", stdin="What is the capital of France?\n/exit\n")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


@pytest.mark.parametrize("args, words", [
    (["generate", "hi", "--model", "/no/such/model"], "does not exist"),
    (["generate", "hi", "--max-tokens", "0"], "max_tokens=0"),
    (["generate", "hi", "--temperature", "-1"], "temperature=-1"),
    (["generate", "hi", "--dtype", "float8"], "float8"),
    (["ask", "--file", "/no/such/file.txt", "question"], "does not exist"),
    (["generate", "--max-model-len", "8", "--max-tokens", "4", "a long prompt that cannot fit in eight tokens"],
     "max_model_len"),
    (["generate", "hi", "--max-num-seq", "3"], "--max-num-seqs"),                 # closest flag named
    (["generate", "hi", "--sparse-threshold", "12x"], "sparse_threshold='12x' is not a size"),
    (["serve", "--swap-space", "4"], "--swap-space is a vLLM option"),
    (["generate", "hi", "--device", "cpu", "--quantization", "fp8"], "needs an NVIDIA GPU with FP8 tensor cores"),
    (["generate", "hi", "--quantization", "int4"], "quantization='int4' is not one of fp8"),
    (["serve", "m.gguf", "--model", "other.gguf"], "two models given"),
    (["info", "--max-model-len", "8", "--sparse-threshold", "4"], "attention='auto' (auto runs dense off a GPU)"),
])
def test_bad_input_is_one_clear_line(args, words):
    r = run(*args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert words in r.stderr and r.stderr.strip().startswith("error:")


def test_bench_prefill_and_decode_on_cpu(tmp_path):
    """The benchmark harness keeps working on the CPU (random weights, tiny lengths)."""
    j = tmp_path / "p.json"
    r = run("bench", "prefill", "--model", "random:smollm2-135m", "--lengths", "128,256", "--repeat", "1",
            "--json", str(j), "--plot", str(tmp_path / "p.png"), "--price-per-gpu-hour", "2")
    assert r.returncode == 0, r.stderr
    rows = json.loads(j.read_text())["rows"]
    assert [x["length"] for x in rows] == [128, 256] and all(x["ttft_s"] > 0 for x in rows)
    assert all(x["usd_per_mtok"] > 0 for x in rows) and (tmp_path / "p.png").stat().st_size > 1000
    stored = json.loads((Path(os.environ["TURBOCTX_HOME"]) / "prefill_rates.json").read_text())["rates"]
    assert [(s["model"], s["length"], s["attention"]) for s in stored] == [
        ("random:smollm2-135m", 128, "dense"), ("random:smollm2-135m", 256, "dense")]
    assert [s["tokens_per_s"] for s in stored] == [x["tokens_per_s"] for x in rows]
    j = tmp_path / "d.json"
    r = run("bench", "decode", "--model", "random:smollm2-135m", "--lengths", "300", "--steps", "4",
            "--repeat", "1", "--json", str(j))
    assert r.returncode == 0, r.stderr
    row = json.loads(j.read_text())["rows"][0]
    assert row["context"] == 300 and row["ms_per_token"] > 0


def test_bench_repeats_compute_the_whole_prompt():
    """Each benchmark repetition prefills the prompt again (no prefix-cache hit)."""
    from turboctx.bench.cli import _setup
    from turboctx.bench.prefill import random_prompt
    from turboctx import SamplingParams
    llm = _setup({"model": "random:smollm2-135m", "device": "cpu"}, 600)
    ids = random_prompt(49152, 520, 0)
    sp = SamplingParams(max_tokens=1, temperature=0)
    outs = [llm.generate(ids, sp)[0] for _ in range(2)]
    assert [o.metrics.num_cached_tokens for o in outs] == [0, 0]
