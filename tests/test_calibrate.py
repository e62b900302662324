"""`turboctx calibrate` on a tiny model: recall measured, low heads raised, the Qwen-format file
written and read back by the engine, the heatmap drawn."""
from __future__ import annotations

import json
import math

import pytest
import torch

from hf_reference import make_tiny_hf
from turboctx.calibration.rounds import CalibrationRound, raise_budgets


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("cal")
    make_tiny_hf("qwen2-gqa3-bias-tied", d)     # 2 layers, 6 query heads, 2 kv heads
    return d


def test_raise_budgets_only_under_threshold_and_capped():
    budgets = [[(10, 100), (10, 100)], [(400, 900), (10, 100)]]
    recall = torch.tensor([[0.5, 0.99], [0.2, math.nan]], dtype=torch.float64)
    new, raised = raise_budgets(budgets, recall, 0.95, 2.0, cap=1000)
    assert new == [[(20, 200), (10, 100)], [(800, 1000), (10, 100)]] and raised == 2
    assert raise_budgets([[(6, 7)]], torch.zeros(1, 1), 0.95, 2.0, cap=10) == ([[(10, 10)]], 1)
    assert raise_budgets([[(20, 200)]], torch.zeros(1, 1), 0.95, 2.0, cap=10) == ([[(20, 200)]], 0)
    # below the forced sinks / local diagonals a raise starts from them
    assert raise_budgets([[(4, 16)]], torch.zeros(1, 1), 0.95, 2.0, 10**4, (30, 100))[0] == [[(60, 200)]]
    s = CalibrationRound(new, recall, torch.full((2, 2), 0.1)).summary(0.95)
    assert s["recall_min"] == 0.2 and s["heads_at_threshold"] == pytest.approx(1 / 3)


def test_calibrate_cli_raises_low_heads_and_writes_the_file(folder, tmp_path):
    from typer.testing import CliRunner

    from turboctx.cli import full_app
    app = full_app()
    out, png, js = tmp_path / "cal", tmp_path / "heat.png", tmp_path / "cal.json"
    r = CliRunner().invoke(app, [
        "calibrate", "--model", str(folder), "--length", "700", "--prompts", "random",
        "--recall-threshold", "0.9", "--rounds", "2", "--vertical-size", "4", "--slash-size", "16",
        "--max-num-batched-tokens", "256", "--device", "cpu", "--out", str(out), "--plot", str(png),
        "--json", str(js)])
    assert r.exit_code == 0, r.output
    assert "recall per head" in r.output
    doc = json.loads((out / "sparse_attention_config.json").read_text())
    assert len(doc) == 2 and sorted(doc[0], key=int) == [str(h) for h in range(6)]
    assert all(e[0] == "vertical_and_slash" and 0 < e[3] <= 1 + 1e-6 for layer in doc for e in layer.values())
    rounds = json.loads(js.read_text())["rounds"]
    first, last = rounds[0]["summary"], rounds[-1]["summary"]
    assert len(rounds) >= 2 and first["heads_at_threshold"] < 1
    assert last["vertical_mean"] > 4 and last["recall_mean"] > first["recall_mean"]
    assert last["heads_at_threshold"] >= first["heads_at_threshold"]
    assert png.stat().st_size > 2000
    # the engine reads the file back
    from turboctx import LLM
    llm = LLM(str(folder), device="cpu", attention="sparse", sparse_config=str(out))
    assert llm.engine.sparse_config().budgets(0, 6) == [tuple(doc[0][str(h)][1:3]) for h in range(6)]
