"""Paired comparison of two eval runs (turboctx/eval/paired.py) and `turboctx eval paired`."""
import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from turboctx.eval import cli
from turboctx.eval.paired import (cluster_of, compare_paired, expand_run_pairs, pair_runs,
                                  paired_stats, sign_test_p, t_quantile_975)


def _rec(i, score, task="passkey", length=16384, sha=None, answer=None, depth=None):
    # depth None: every prompt its own cluster (the independent case)
    return {"task": task, "length": length, "depth": depth, "index": i,
            "prompt_sha256": sha or f"p{task}{length}{i}", "expected": ["1"],
            "answer": answer if answer is not None else str(score), "score": score}


def _write(d, recs):
    d.mkdir(parents=True, exist_ok=True)
    (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return d


def test_sign_test_exact():
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(0, 3) == pytest.approx(0.25)               # 2 * (1/8)
    assert sign_test_p(1, 9) == pytest.approx(2 * 10 / 512)       # 8 against 1: 0.039
    assert sign_test_p(8, 9) == sign_test_p(1, 9)
    assert sign_test_p(5, 10) == 1.0


def test_identical_runs_get_an_interval_that_shrinks_with_n():
    small = paired_stats([(_rec(i, 1.0), _rec(i, 1.0)) for i in range(20)])
    large = paired_stats([(_rec(i, i % 2), _rec(i, i % 2)) for i in range(400)])
    for s in (small, large):
        assert s.diff == 0 and s.a_better == s.b_better == 0 and s.sign_p == 1.0
        assert s.ci_lo == pytest.approx(-s.ci_hi) and s.ci_hi > 0
    assert large.ci_hi < small.ci_hi
    # half a pseudo-pair each way: se = sqrt(1 / (n + 1)^2)
    assert large.ci_hi == pytest.approx(100 * 1.96 / 401)
    assert large.within(2.0) and not small.within(2.0)
    assert large.score_a == 50.0 and large.same_answer == 400


def test_differences_and_interval():
    # B loses 8 of 100 samples that A found and wins 1: diff -7 points
    pairs = [(_rec(i, 1.0), _rec(i, 0.0 if i < 8 else 1.0)) for i in range(50)]
    pairs += [(_rec(i, 0.0), _rec(i, 1.0 if i == 50 else 0.0)) for i in range(50, 100)]
    s = paired_stats(pairs)
    assert (s.n, s.a_better, s.b_better) == (100, 8, 1)
    assert s.score_a == 50.0 and s.score_b == 43.0 and s.diff == pytest.approx(-7.0)
    d = [-1.0] * 8 + [1.0] + [0.0] * 91
    n1 = 101
    se = math.sqrt(((sum(x * x for x in d) + 1) / n1 - (sum(d) / n1) ** 2) / n1)
    assert s.ci_lo == pytest.approx(-7.0 - 196 * se) and s.ci_hi == pytest.approx(-7.0 + 196 * se)
    assert s.ci_hi < 0 and not s.within(2.0)
    assert s.sign_p == pytest.approx(sign_test_p(1, 9))
    with pytest.raises(ValueError, match="nothing to compare"):
        paired_stats([])


def test_t_quantile_against_tables():
    # Student's t, 0.975 (printed tables / scipy.stats.t.ppf)
    for dof, t in ((1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (9, 2.2622),
                   (19, 2.0930), (39, 2.0227), (1000, 1.9623)):
        assert t_quantile_975(dof) == pytest.approx(t, abs=0.004)
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile_975(0)


def test_clusters_are_task_length_depth():
    assert cluster_of(_rec(0, 1.0, depth=0.15)) == cluster_of(_rec(7, 0.0, depth=0.15, sha="x"))
    assert cluster_of(_rec(0, 1.0, depth=0.15)) != cluster_of(_rec(0, 1.0, depth=0.25))
    assert cluster_of(_rec(0, 1.0, depth=0.15)) != cluster_of(_rec(0, 1.0, depth=0.15, length=32768))
    assert cluster_of(_rec(0, 1.0)) != cluster_of(_rec(1, 1.0))          # no depth: its own


def test_flips_in_one_cell_widen_the_interval():
    # 200 prompts in 20 depth cells; B loses all 10 prompts of one cell and nothing else.
    # As independent prompts: -5 points, interval clear of 0. As 20 cells, one of which moved:
    # the cluster-robust interval is wider than the naive one (and t at 19 dof, not 1.96).
    def pairs(spread):
        out = []
        for i in range(200):
            cell = i // 10 if not spread else i % 20
            lost = (i // 10 == 0) if not spread else (i < 10)
            out.append((_rec(i, 1.0, depth=cell / 20), _rec(i, 0.0 if lost else 1.0, depth=cell / 20)))
        return out
    one_cell = paired_stats(pairs(spread=False))
    spread = paired_stats(pairs(spread=True))            # the same 10 losses, in 10 cells
    for s in (one_cell, spread):
        assert s.n == 200 and s.clusters == 20 and s.diff == pytest.approx(-5.0)
        assert s.iid_ci_lo == pytest.approx(spread.iid_ci_lo)
    d = [-10.0] + [0.0] * 19                            # cell sums of d: CR1 by hand
    m = -10.0 / 200
    se_cr = math.sqrt(20 / 19 * sum((x - 10 * m) ** 2 for x in d)) / 200
    assert one_cell.ci_lo == pytest.approx(100 * (m - t_quantile_975(19) * se_cr))
    assert one_cell.ci_hi > 0 > one_cell.iid_ci_hi        # one cell: not shown; naively "shown"
    assert spread.ci_hi < 0                               # spread over cells: still a loss
    assert one_cell.ci_hi - one_cell.ci_lo > 2 * (spread.ci_hi - spread.ci_lo)


def test_one_cluster_has_no_interval(tmp_path):
    s = paired_stats([(_rec(i, 1.0, depth=0.5), _rec(i, float(i % 2), depth=0.5)) for i in range(40)])
    assert s.clusters == 1 and s.ci_lo == -math.inf and s.ci_hi == math.inf and not s.within(2.0)
    a = _write(tmp_path / "a", [_rec(i, 1.0, depth=0.5) for i in range(6)])
    b = _write(tmp_path / "b", [_rec(i, float(i % 2), depth=0.5) for i in range(6)])
    r = CliRunner().invoke(cli.eval_app, ["paired", "--a", str(a), "--b", str(b),
                                          "--json", str(tmp_path / "p.json")])
    assert r.exit_code == 0 and "none: 1 cluster" in r.output, r.output
    row = json.loads((tmp_path / "p.json").read_text())["rows"][0]   # strict JSON: no Infinity
    assert row["ci_lo"] is None and row["ci_hi"] is None and row["within"] is False


def test_fractional_scores():
    s = paired_stats([(_rec(0, 0.5), _rec(0, 0.25)), (_rec(1, 0.25), _rec(1, 0.5))])
    assert s.diff == pytest.approx(0.0) and (s.a_better, s.b_better) == (1, 1)


def test_pairing_needs_the_same_prompt_and_scores(tmp_path):
    a = _write(tmp_path / "a", [_rec(0, 1.0), _rec(1, 1.0), _rec(2, 0.0), _rec(3, 1.0)])
    b = _write(tmp_path / "b", [_rec(0, 0.0), _rec(1, 1.0, sha="other"),
                                {**_rec(2, 0.0), "score": None, "error": "too long"}, _rec(4, 1.0)])
    pairs, left = pair_runs(a, b)
    assert [x["index"] for x, _ in pairs] == [0]
    assert left == 4                                   # 1: prompt differs, 2: error, 3 and 4: one run
    with pytest.raises(FileNotFoundError, match="samples.jsonl"):
        pair_runs(a, tmp_path / "missing")


def test_pooling_rows_and_duplicates(tmp_path):
    a1 = _write(tmp_path / "a1", [_rec(i, 1.0, length=L) for L in (16384, 32768) for i in range(4)])
    b1 = _write(tmp_path / "b1", [_rec(i, float(i != 0), length=L) for L in (16384, 32768)
                                  for i in range(4)])
    a2 = _write(tmp_path / "a2", [_rec(i, 1.0, task="niah", length=16384) for i in range(3)]
                + [_rec(0, 1.0, length=32768)])      # a prompt already paired in (a1, b1)
    b2 = _write(tmp_path / "b2", [_rec(i, 1.0, task="niah", length=16384) for i in range(3)]
                + [_rec(0, 1.0, length=32768)])
    res = compare_paired([(a1, b1), (a2, b2)])
    rows = {(r["task"], r["length"]): r for r in res["rows"]}
    assert list(rows) == [("niah", 16384), ("passkey", 16384), ("passkey", 32768),
                          ("passkey", "all"), ("all", "all")]
    assert rows[("passkey", 16384)]["diff"] == pytest.approx(-25.0)
    assert rows[("passkey", 32768)]["n"] == 4 and rows[("passkey", 32768)]["diff"] == 0.0
    assert rows[("passkey", "all")]["n"] == 8 and rows[("all", "all")]["n"] == 11
    assert res["left_out"] == 1


def test_cli(tmp_path):
    a = _write(tmp_path / "a", [_rec(i, 1.0) for i in range(10)])
    b = _write(tmp_path / "b", [_rec(i, float(i > 1)) for i in range(10)])
    run = CliRunner().invoke
    r = run(cli.eval_app, ["paired", "--a", str(a), "--b", str(b), "--json", str(tmp_path / "p.json")])
    assert r.exit_code == 0, r.output
    assert "-20.0" in r.output and "passkey" in r.output
    rows = json.loads((tmp_path / "p.json").read_text())["rows"]
    assert rows[0]["a_better"] == 2 and rows[0]["n"] == 10
    r = run(cli.eval_app, ["paired", "--a", str(a), "--b", str(b), "--a", str(a)])
    assert r.exit_code == 2 and "in pairs" in r.output
    r = run(cli.eval_app, ["paired", "--a", str(a), "--b", str(tmp_path / "none")])
    assert r.exit_code == 2 and "samples.jsonl" in r.output


def test_globs_pair_runs_by_folder(tmp_path):
    for seed in (7, 8, 9):
        _write(tmp_path / "s7" / f"seed{seed}" / "dense", [_rec(i + 10 * seed, 1.0) for i in range(5)])
    for seed in (7, 8):
        _write(tmp_path / "s8" / f"seed{seed}" / "sparse",
               [_rec(i + 10 * seed, float(i > 0)) for i in range(5)])
    ga, gb = str(tmp_path / "s7" / "seed*" / "dense"), str(tmp_path / "s8" / "seed*" / "sparse")
    pairs, alone = expand_run_pairs([ga], [gb])
    assert [(x.parent.name, y.parent.name) for x, y in pairs] == [("seed7", "seed7"), ("seed8", "seed8")]
    assert alone == [str(tmp_path / "s7" / "seed9" / "dense")]
    r = CliRunner().invoke(cli.eval_app, ["paired", "--a", ga, "--b", gb])
    assert r.exit_code == 0 and "seed9" in r.output and "without a partner" in r.output, r.output
    assert "-20.0" in r.output                             # 2 of 10 lost
    with pytest.raises(ValueError, match="matches no run"):
        expand_run_pairs([str(tmp_path / "none*")], [gb])
    with pytest.raises(ValueError, match="in common"):
        expand_run_pairs([str(tmp_path / "s7" / "seed*")], [str(tmp_path / "s8")])
    assert expand_run_pairs(["x", "y"], ["z", "w"])[0] == [(Path("x"), Path("z")), (Path("y"), Path("w"))]
