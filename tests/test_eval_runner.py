"""Passkey / NIAH grids, runner bookkeeping (samples.jsonl, summary.json, resume), plots, CLI."""
import json
import re

import pytest

from turboctx.eval import niah, passkey
from turboctx.eval.common import parse_floats, parse_size, parse_sizes
from turboctx.eval.runner import load_done, run_samples, summarize
from eval_doubles import DownTarget, OracleTarget, WordTokenizer, WrongTarget
from turboctx.eval.targets import TargetUnavailable

FIELDS = {"task", "length", "depth", "prompt_sha256", "expected", "answer", "score"}


@pytest.fixture(scope="module")
def tok():
    return WordTokenizer()


def _count(tok):
    return lambda t: len(tok.encode(t))


def test_parse_sizes():
    assert parse_sizes("1k,4K,1m,1500") == [1024, 4096, 1048576, 1500]
    assert parse_size("0.5k") == 512
    assert parse_floats("0,50,100") == [0.0, 0.5, 1.0]
    assert parse_floats("0,0.25,1") == [0.0, 0.25, 1.0]
    with pytest.raises(ValueError):
        parse_size("4x")


def test_parse_depths():
    from turboctx.eval.common import parse_depths
    assert parse_depths("0,50,100", 1) == [0.0, 0.5, 1.0]
    assert parse_depths("grid:5", 1) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_depths("grid:1", 1) == [0.5]
    r7, r8 = parse_depths("random:50", 7), parse_depths("random:50", 8)
    assert r7 == parse_depths("random:50", 7) and r7 != r8          # the seed picks the positions
    assert r7 == sorted(r7) and 45 <= len(r7) <= 50 and all(0 <= d < 1 for d in r7)
    assert all(d == round(d, 4) for d in r7)
    for bad, msg in (("random:0", "whole number"), ("grid:x", "whole number"),
                     ("2,300", "0..1"), ("-0.5", "0..1"), ("a,b", "comma-separated"), ("", "0..1")):
        with pytest.raises(ValueError, match=msg):
            parse_depths(bad, 1)


CLASSIC_GARBAGE = " ".join(["The grass is green. The sky is blue. The sun is yellow. Here we go. "
                            "There and back again."] * 5000)   # the classic's garbage_inf


def test_passkey_prompt_classic(tok):
    """Landmark Attention's run_test.py: five parts, one per line; the key from 1..50000."""
    s = passkey.generate([1024], [0.5], 1, 0, _count(tok))[0]
    key = s.expected[0]
    lines = s.prompt.split("\n")
    assert len(lines) == 5
    assert lines[0] == ("There is an important info hidden inside a lot of irrelevant text. Find it "
                        "and memorize them. I will quiz you about the important information there.")
    assert lines[2] == f"The pass key is {key}. Remember it. {key} is the pass key."
    assert lines[4] == "What is the pass key? The pass key is"
    for filler in (lines[1], lines[3]):   # both cut from the start of the repeated garbage
        assert CLASSIC_GARBAGE.startswith(filler) and filler.endswith(".") and len(filler) > 1000
    assert abs(len(lines[1]) - len(lines[3])) <= 40          # depth 0.5: the key in the middle
    keys = [int(x.expected[0]) for x in passkey.generate([256], [0.0, 0.5, 1.0], 20, 3, _count(tok))]
    assert all(1 <= k <= 50000 for k in keys) and min(keys) < 10000   # randint(1, 50000)
    assert [len(x.expected[0]) for x in passkey.generate([256], [0.5], 4, 3, _count(tok),
                                                         digits=7)] == [7] * 4


class SaysWrongFirst(OracleTarget):
    """Answers "54321, no, KEY": the key, but not as the first number."""

    def answer(self, p: str) -> str:
        return " 54321, no, " + re.search(r"The pass key is (\d+)\. Remember it", p).group(1)


def test_passkey_scores_the_first_integer(tok, tmp_path):
    samples = passkey.generate([1024], [0.25, 0.75], 2, 0, _count(tok))
    summary = run_samples(samples, SaysWrongFirst(tok), tmp_path / "first", progress=False)
    assert summary["overall"] == 0.0                      # the classic: first integer only
    right = run_samples(samples, OracleTarget(tok), tmp_path / "right", progress=False)
    assert right["overall"] == 100.0
    subs = passkey.generate([1024], [0.25, 0.75], 2, 0, _count(tok), scoring="substring")
    assert run_samples(subs, SaysWrongFirst(tok), tmp_path / "sub", progress=False)["overall"] == 100.0
    from turboctx.eval.ruler.scoring import score_sample
    assert score_sample("54321, no, 12345", ["12345"], "first_integer") == 0.0
    assert score_sample("54321, no, 12345", ["12345"], "all") == 1.0
    assert score_sample(" 12345. Remember it.", ["12345"], "first_integer") == 1.0
    assert score_sample("no number", ["12345"], "first_integer") == 0.0
    with pytest.raises(ValueError, match="first-integer or substring"):
        passkey.generate([1024], [0.5], 1, 0, _count(tok), scoring="exact")


def test_errors_count_as_misses_and_are_counted():
    recs = [{"task": "t", "length": 1024, "depth": 0.5, "index": 0, "score": 1.0},
            {"task": "t", "length": 1024, "depth": 0.5, "index": 1, "score": None,
             "error": "PromptTooLong: over the limit"},
            {"task": "u", "length": 1024, "depth": None, "index": 0, "score": 1.0}]
    s = summarize(recs)
    t = s["tasks"]["t"]
    assert (t["score"], t["n"], t["errors"]) == (50.0, 2, 1)     # one right + one error: 50
    assert t["by_length"]["1024"] == {"score": 50.0, "n": 2, "errors": 1}
    assert t["grid"] == {"0.5000": {"1024": 50.0}}
    assert s["by_length"] == {"1024": 75.0} and s["overall"] == 75.0 and s["errors"] == 1


def test_overall_says_what_it_covers():
    from turboctx.eval.summary import summarize as summarize_
    recs = [{"task": "vt", "length": 4096, "depth": None, "index": 0, "score": 1.0},
            {"task": "vt", "length": 4096, "depth": None, "index": 1, "score": None, "error": "x"},
            {"task": "cwe", "length": 4096, "depth": None, "index": 0, "score": 0.5}]
    s = summarize_(recs, not_built={"qa_1@4096": "qa_1 needs the squad file (--squad PATH)",
                                    "cwe@1048576": "cwe at 1048576 tokens needs more words"})
    assert s["overall"] == 50.0 and s["overall_tasks"] == 2 and s["tasks_asked"] == 3
    assert s["overall_text"] == ("50.0 over 2 of 3 tasks; 1 error counted as misses; not built: "
                                 "qa_1 at 4K (qa_1 needs the squad file (--squad PATH)), "
                                 "cwe at 1M (cwe at 1048576 tokens needs more words)")
    assert s["by_length_tasks"] == {"4096": 2, "1048576": 0} and s["by_length"]["1048576"] is None


@pytest.mark.parametrize("gen", ["passkey", "niah"])
def test_grid_oracle_wrong_and_lengths(gen, tok, tmp_path):
    mod = passkey if gen == "passkey" else niah
    lengths, depths = [1024, 2048], [0.0, 0.5, 1.0]
    samples = mod.generate(lengths, depths, 2, 1, _count(tok))
    assert len(samples) == 12
    for s in samples:
        assert 0.98 * s.length <= s.prompt_tokens + s.max_tokens <= s.length
    summary = run_samples(samples, OracleTarget(tok), tmp_path / "ok", progress=False)
    task = summary["tasks"][gen]
    assert task["score"] == 100.0 and task["n"] == 12
    assert set(task["grid"]) == {"0.0000", "0.5000", "1.0000"}
    assert task["grid"]["0.5000"] == {"1024": 100.0, "2048": 100.0}
    bad = run_samples(samples, WrongTarget(tok), tmp_path / "bad", progress=False)
    assert bad["tasks"][gen]["score"] == 0.0 and bad["overall"] == 0.0


def test_samples_jsonl_fields_and_save_prompts(tok, tmp_path):
    samples = passkey.generate([1024], [0.25], 2, 0, _count(tok))
    run_samples(samples, OracleTarget(tok), tmp_path, progress=False, save_prompts=True)
    recs = [json.loads(l) for l in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(recs) == 2
    for r, s in zip(recs, samples):
        assert FIELDS <= set(r) and r["prompt"] == s.prompt
        assert r["task"] == "passkey" and r["length"] == 1024 and r["depth"] == 0.25
        assert r["score"] == 1.0 and r["expected"] == s.expected
    run_samples(samples, OracleTarget(tok), tmp_path / "b", progress=False)
    rec = json.loads((tmp_path / "b" / "samples.jsonl").read_text().splitlines()[0])
    assert "prompt" not in rec and FIELDS <= set(rec)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["tasks"]["passkey"]["by_length"]["1024"] == {"score": 100.0, "n": 2, "errors": 0}
    assert summary["by_length"] == {"1024": 100.0} and summary["overall"] == 100.0


def test_resume_skips_done_and_retries_errors(tok, tmp_path):
    samples = passkey.generate([1024], [0.0, 1.0], 3, 0, _count(tok))
    t1 = OracleTarget(tok)
    run_samples(samples[:4], t1, tmp_path, progress=False)
    with (tmp_path / "samples.jsonl").open("a") as f:
        f.write('{"task": "passkey", "len')  # a torn line from a killed run
    t2 = OracleTarget(tok)
    summary = run_samples(samples, t2, tmp_path, progress=False)
    assert t2.calls == 2 and summary["tasks"]["passkey"]["n"] == 6
    t3 = OracleTarget(tok)
    run_samples(samples, t3, tmp_path, progress=False)
    assert t3.calls == 0
    assert len(load_done(tmp_path / "samples.jsonl")) == 6


def test_too_long_is_an_error_and_a_miss(tok, tmp_path):
    samples = passkey.generate([1024, 2048], [0.5], 1, 0, _count(tok))
    summary = run_samples(samples, OracleTarget(tok, max_len=1500), tmp_path, progress=False)
    t = summary["tasks"]["passkey"]
    assert t["score"] == 50.0 and t["n"] == 2 and t["errors"] == 1
    assert t["by_length"]["2048"] == {"score": 0.0, "n": 1, "errors": 1}
    recs = [json.loads(l) for l in (tmp_path / "samples.jsonl").read_text().splitlines()]
    err = [r for r in recs if r["length"] == 2048][0]
    assert err["score"] is None and err["answer"] is None and "PromptTooLong" in err["error"]
    # the error is retried on resume (e.g. against a target with a larger limit)
    t2 = OracleTarget(tok)
    again = run_samples(samples, t2, tmp_path, progress=False)
    assert again["errors"] == 0 and t2.calls == 1 and again["overall"] == 100.0


def test_target_down_raises(tok, tmp_path):
    with pytest.raises(TargetUnavailable):
        run_samples(passkey.generate([1024], [0.5], 1, 0, _count(tok)), DownTarget(tok),
                    tmp_path, progress=False)


def test_heatmap_and_ppl_png(tmp_path):
    from turboctx.eval.plots import heatmap, nll_by_position
    grid = {"0.0000": {"1024": 100.0, "2048": 50.0}, "1.0000": {"1024": 0.0, "2048": None}}
    p = heatmap(grid, tmp_path / "h.png", title="t")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from turboctx.eval.plots import _bin_depths
    many = {f"{d / 40:.4f}": {"1024": 100.0 * (d < 20), "2048": 0.0} for d in range(41)}
    assert heatmap(many, tmp_path / "many.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    depths = sorted(many, key=float)
    rows, labels = _bin_depths(depths, [[many[d]["1024"], many[d]["2048"]] for d in depths], 2)
    assert len(rows) == 10 and labels[0] == "0-10% (4)" and labels[-1] == "90-100% (5)"
    assert rows[0] == [100.0, 0.0] and rows[4][0] == 100.0 and rows[5][0] == 0.0
    q = nll_by_position({"a": {"0-2K": 3.0, "2K-8K": 2.5}, "b": {"0-2K": 3.1, "2K-8K": None}},
                        tmp_path / "p.png")
    assert q.stat().st_size > 1000


def test_ppl_bins(tok):
    from turboctx.eval.ppl import bin_edges, nll_by_bin, run_ppl
    assert bin_edges(32768) == [0, 2048, 8192, 16384, 32768]
    assert bin_edges(10000) == [0, 2048, 8192, 10000]
    res = nll_by_bin([[-1.0] * 2047 + [-2.0] * 2048], 4096)
    assert res == {"0-2K": 1.0, "2K-4K": 2.0}
    out = run_ppl({"fake": OracleTarget(tok)}, tok.encode, 3000, 2, progress=False)
    assert list(out["fake"]) == ["0-2K", "2K-3000"]
    assert out["fake"]["0-2K"] == pytest.approx(1.1, abs=0.01)


def test_cli_passkey_niah_ruler(tok, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from turboctx.eval import cli
    seen = {}

    def fake_target(options, *a, **k):
        seen.update(options=options)
        return OracleTarget(tok)

    monkeypatch.setattr(cli, "make_target", fake_target)
    run = CliRunner().invoke
    r = run(cli.eval_app, ["passkey", "--model", "m.gguf", "--dca", "--attention", "sparse",
                           "--max-model-len", "16k", "--max-num-batched-tokens", "8k", "--lengths", "1k,2k",
                           "--depths", "0,50,100", "--trials", "1", "--out", str(tmp_path / "pk")])
    assert r.exit_code == 0, r.output
    assert seen["options"] == {"model": "m.gguf", "dca": True, "attention": "sparse",
                               "max_model_len": 16384, "max_num_batched_tokens": 8192}
    assert (tmp_path / "pk" / "passkey_heatmap.png").exists()
    assert json.loads((tmp_path / "pk" / "summary.json").read_text())["overall"] == 100.0
    for args, msg in ((["--depths", "random:x"], "--depths"), (["--lengths", "4q"], "--lengths"),
                      (["--max-model-len", "8q"], "--max-model-len")):
        r = run(cli.eval_app, ["passkey", "--model", "m.gguf", "--out", str(tmp_path / "bad"), *args])
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output, r.output
    r = run(cli.eval_app, ["passkey", "--lengths", "1k", "--depths", "random:30", "--trials", "1",
                           "--seed", "3", "--out", str(tmp_path / "pkr")])
    assert r.exit_code == 0, r.output
    recs = [json.loads(x) for x in (tmp_path / "pkr" / "samples.jsonl").read_text().splitlines()]
    assert len({x["depth"] for x in recs}) == len(recs) >= 25
    r = run(cli.eval_app, ["niah", "--lengths", "1k", "--depths", "0,100", "--out", str(tmp_path / "n")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "n" / "niah_heatmap.png").exists()
    r = run(cli.eval_app, ["ruler", "--lengths", "4k", "--samples", "1", "--tasks",
                           "niah_single_1,vt,qa_1", "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["overall"] == 100.0 and set(s["tasks"]) == {"niah_single_1", "vt"}
    assert "qa_1@4096" in s["not_built"] and s["tasks_asked"] == 3
    assert s["overall_text"].startswith("100.0 over 2 of 3 tasks; not built: qa_1 at 4K (")
    assert "overall 100.0 over 2 of 3 tasks; not built: qa_1 at 4K" in r.output
    r = run(cli.eval_app, ["ruler", "--lengths", "4k", "--tasks", "vt,nosuch", "--out",
                           str(tmp_path / "bad")])
    assert r.exit_code == 2 and "nosuch" in r.output and "Traceback" not in r.output


def test_cli_passkey_scoring(tok, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from turboctx.eval import cli
    monkeypatch.setattr(cli, "make_target", lambda *a, **k: SaysWrongFirst(tok))
    run = CliRunner().invoke
    base = ["passkey", "--lengths", "1k", "--depths", "0.5", "--trials", "2"]
    for extra, want in (([], 0.0), (["--passkey-scoring", "substring"], 100.0),
                        (["--passkey-scoring", "first-integer"], 0.0)):
        out = tmp_path / (extra[-1] if extra else "default")
        r = run(cli.eval_app, [*base, *extra, "--out", str(out)])
        assert r.exit_code == 0, r.output
        assert json.loads((out / "summary.json").read_text())["overall"] == want, extra
    r = run(cli.eval_app, [*base, "--passkey-scoring", "exact", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--passkey-scoring" in r.output and "Traceback" not in r.output


def test_cli_ruler_chat_template(tok, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from turboctx.eval import cli
    monkeypatch.setattr(cli, "make_target", lambda *a, **k: OracleTarget(tok))
    r = CliRunner().invoke(cli.eval_app, ["ruler", "--lengths", "4k", "--samples", "1", "--tasks",
                                          "niah_single_1", "--template", "chat", "--save-prompts",
                                          "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "samples.jsonl").read_text().splitlines()[0])
    assert rec["prompt"].startswith("<|user|>\nA special magic number is hidden")
    assert rec["prompt"].endswith("provided text?\n<|assistant|>\n The special magic number for "
                                  + rec["prompt"].split("magic number for ")[-1])
