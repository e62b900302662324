"""The plan before the work: what fits (max_model_len, memory, trained length) and what to
change when it does not; the TTFT estimate from measured rates or the default; cost; the stored
rates; `ask --dry-run` on a repository and on PDFs."""
from __future__ import annotations

import json

import pytest
import torch

from cli_runner import run_cli
from document_fixtures import default_tokenizer, make_repository, write_pdf
from turboctx.bench.rates import (PrefillRate, architecture_key, device_name, load_rates,
                                  matching_rates, rates_from_rows, store_rates)
from turboctx.documents.estimate import DEFAULT_NOTE, estimate_prefill, flops
from turboctx.documents.fit import Limits, check_fit
from turboctx.home import turboctx_home
from turboctx.weights import preset_config

LIMITS = Limits(max_model_len=8192, tokens_that_fit=90_000, trained_context=8192,
                kv_bytes_per_token=46080, device_type="cpu", dtype="float32", dca=False,
                gpu_memory_utilization=0.92)


def limits(**changes) -> Limits:
    return Limits(**{**LIMITS.__dict__, **changes})


def test_a_prompt_that_fits():
    fit = check_fit(8000, 192, LIMITS)
    assert fit.fits and not fit.problems and not fit.remedies and not fit.warnings
    assert not check_fit(8000, 193, LIMITS).fits


def test_over_max_model_len_says_by_how_much_and_what_fits_it():
    fit = check_fit(8100, 256, LIMITS)
    assert not fit.fits and fit.over_max_model_len == 164 and fit.over_memory == 0
    message = fit.message()
    assert "8,100 prompt tokens + 256 to generate = 8,356 is 164 tokens over max_model_len 8,192" in message
    assert "a smaller --max-tokens (at most 92)" in message
    assert "--max-model-len 9k --dca" in message              # past the trained 8K: DCA with it
    assert "\n" not in message
    within_trained = check_fit(8100, 256, limits(trained_context=32768))
    assert "--max-model-len 9k;" in within_trained.message() and "--dca" not in within_trained.message()
    alone = check_fit(9000, 10, LIMITS)
    assert not any("--max-tokens" in r for r in alone.remedies)   # the prompt alone is over


def test_over_memory_names_the_memory_options():
    gpu = limits(device_type="cuda", dtype="bfloat16", max_model_len=1 << 20, trained_context=1 << 20)
    fit = check_fit(200_000, 256, gpu)
    assert fit.over_memory == 200_256 - 90_000 and fit.over_max_model_len == 0
    message = fit.message()
    assert "110,256 tokens over what fits in memory" in message
    assert "--gpu-memory-utilization (now 0.92)" in message and "--tensor-parallel-size" in message
    cpu = check_fit(100_000, 0, limits(max_model_len=1 << 20, trained_context=1 << 20))
    assert "--dtype bfloat16" in cpu.message()
    start = check_fit(1000, 0, limits(max_model_len=200_000))       # the engine itself would not start
    assert not start.fits and start.engine_cannot_start and "--max-model-len 1k" in start.message()


def test_past_the_trained_length_without_dca_warns():
    fit = check_fit(10_000, 0, limits(max_model_len=16384))
    assert fit.fits and "past the model's trained length (8,192)" in fit.warnings[0]
    assert not check_fit(10_000, 0, limits(max_model_len=16384, dca=True)).warnings


def rate(length: int, tokens_per_s: float, **changes) -> PrefillRate:
    fields = dict(device="cpu: test (2 threads)", model="m.gguf", architecture="arch", attention="dense",
                  dtype="float32", tensor_parallel_size=1, length=length, tokens_per_s=tokens_per_s,
                  date="2026-12-02T00:00:00+00:00")
    return PrefillRate(**{**fields, **changes})


def test_the_estimate_is_the_measurement_at_a_measured_length_and_between_them():
    m = preset_config("smollm2-135m")
    rates = [rate(1024, 400.0), rate(4096, 200.0)]
    at = estimate_prefill(m, 1024, "cpu", 1, rates)
    assert at.measured and at.ttft_s == pytest.approx(1024 / 400.0) and "m.gguf at 1,024-4,096 tokens" in at.note
    assert estimate_prefill(m, 4096, "cpu", 1, rates).ttft_s == pytest.approx(4096 / 200.0)
    middle = estimate_prefill(m, 2048, "cpu", 1, rates).ttft_s
    assert 2048 / 400.0 < middle < 2048 / 200.0
    far = estimate_prefill(m, 16384, "cpu", 1, rates)        # the achieved FLOP/s at 4K holds
    assert far.ttft_s == pytest.approx(4096 / 200.0 * flops(m, 16384) / flops(m, 4096))
    default = estimate_prefill(m, 2048, "cpu", 1, [])
    assert not default.measured and default.note == DEFAULT_NOTE
    assert estimate_prefill(m, 2048, "cuda", 2, []).ttft_s < default.ttft_s


def test_rates_are_stored_in_the_home_and_replaced_by_key(tmp_path, monkeypatch):
    monkeypatch.setenv("TURBOCTX_HOME", str(tmp_path / "home"))
    assert turboctx_home() == tmp_path / "home" and load_rates() == []
    path = store_rates([rate(1024, 100.0), rate(2048, 90.0)])
    assert path == tmp_path / "home" / "prefill_rates.json"
    store_rates([rate(1024, 150.0), rate(1024, 50.0, attention="sparse")])
    stored = load_rates()
    assert sorted((r.attention, r.length, r.tokens_per_s) for r in stored) == [
        ("dense", 1024, 150.0), ("dense", 2048, 90.0), ("sparse", 1024, 50.0)]
    assert json.loads(path.read_text())["version"] == 1
    other = rate(4096, 70.0, model="other.gguf")
    setup = dict(device="cpu: test (2 threads)", architecture="arch", attention="dense", dtype="float32",
                 tensor_parallel_size=1)
    assert [r.length for r in matching_rates(stored + [other], model="m.gguf", **setup)] == [1024, 2048]
    assert [r.length for r in matching_rates(stored + [other], model="x.gguf", **setup)] == [1024, 2048, 4096]
    assert matching_rates(stored, model="m.gguf", **{**setup, "device": "NVIDIA H200"}) == []
    rows = [{"engine": "turboctx", "length": 512, "ttft_s": 2.0, "tokens_per_s": 256.0},
            {"engine": "hf", "length": 512, "ttft_s": 4.0, "tokens_per_s": 128.0}]
    assert [r.tokens_per_s for r in rates_from_rows(rows, date="d", model="m", **setup)] == [256.0]


def test_home_folder_order(monkeypatch, tmp_path):
    monkeypatch.delenv("TURBOCTX_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert turboctx_home() == tmp_path / "xdg" / "turboctx"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert turboctx_home() == tmp_path / "h" / ".cache" / "turboctx"


def test_the_plan_uses_this_machines_measured_rate_and_prices_it():
    from turboctx.config import EngineConfig
    from turboctx.documents import Document, build_document_prompt
    from turboctx.documents.plan import make_plan
    from turboctx.weights import open_checkpoint
    checkpoint = open_checkpoint(None)
    docs = [Document("a.txt", "word " * 3000, "text")]
    prompt = build_document_prompt(default_tokenizer(), docs, "How many words?")
    config = EngineConfig.from_options(device="cpu")
    unmeasured = make_plan(config, checkpoint.config, prompt, ["text"], [], 64)
    assert not unmeasured.estimate.measured and unmeasured.cost_usd is None
    assert unmeasured.prompt_tokens == len(prompt.prompt_ids) and unmeasured.fit.fits
    store_rates([rate(1024, 500.0, device=device_name(torch.device("cpu")), model=checkpoint.source,
                      architecture=architecture_key(checkpoint.config)),
                 rate(8192, 250.0, device=device_name(torch.device("cpu")), model="another.gguf",
                      architecture=architecture_key(checkpoint.config))])
    plan = make_plan(config, checkpoint.config, prompt, ["text"], [], 64, price_per_gpu_hour=3.0)
    assert plan.estimate.measured and plan.estimate.ttft_s == pytest.approx(
        1024 / 500.0 * flops(checkpoint.config, plan.prompt_tokens) / flops(checkpoint.config, 1024))
    assert plan.cost_usd == pytest.approx(plan.estimate.ttft_s / 3600 * 3.0)


def test_dry_run_on_a_repository_lists_the_right_files_in_order(tmp_path):
    expected = make_repository(tmp_path / "repo")
    r = run_cli("ask", "--dry-run", "--json", "--dir", "repo", "--max-tokens", "64",
                "What does core_step_3 do?", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)["plan"]
    assert [d["name"] for d in plan["documents"]] == [f"repo/{p}" for p in expected["read"]]
    assert {s["path"]: s["category"] for s in plan["skipped"]} == {f"repo/{p}": c for p, c in expected["skipped"].items()}
    tokens = [d["tokens"] for d in plan["documents"]]
    assert 6000 < sum(tokens) < 8000 and plan["prompt_tokens"] == sum(tokens) + plan["template_tokens"]
    assert plan["fits"] and plan["estimate"]["note"] == DEFAULT_NOTE and plan["cost_usd"] is None


def test_dry_run_on_pdfs_prints_the_plan_and_a_textless_pdf_is_an_error(tmp_path):
    for name, words in (("a.pdf", "Alpha"), ("b.pdf", "Beta"), ("c.pdf", "Gamma")):
        write_pdf(tmp_path / name, [[f"{words} report, line {i}." for i in range(20)], [f"{words} ends."]])
    (tmp_path / "notes.txt").write_text("Notes about the reports.\n")
    r = run_cli("ask", "--dry-run", "-f", "c.pdf", "-f", "a.pdf", "--file", "notes.txt", "-f", "b.pdf",
                "--price-per-gpu-hour", "2.5", "Which report ends first?", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    listed = [line.split()[1:] for line in lines[2:6]]
    assert listed == [["c.pdf", "(pdf)"], ["a.pdf", "(pdf)"], ["notes.txt"], ["b.pdf", "(pdf)"]]
    total = int(lines[7].split()[0].replace(",", ""))
    assert total == sum(int(line.split()[0].replace(",", "")) for line in lines[2:7])
    assert lines[7].endswith("prompt tokens in all, in 4 documents")
    assert any(line.startswith("estimated TTFT") and DEFAULT_NOTE in line for line in lines)
    assert any(line.startswith("estimated cost $") and "$2.50/GPU-hour" in line for line in lines)
    write_pdf(tmp_path / "scan.pdf", [[]])
    r = run_cli("ask", "--dry-run", "-f", "a.pdf", "-f", "scan.pdf", "Which?", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: PDF 'scan.pdf' has no text layer (1 page, no text layer: a scan?); run OCR on it "
        "first (e.g. ocrmypdf) or give its text as a file"]
