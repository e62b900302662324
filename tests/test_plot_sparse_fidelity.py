"""scripts/plot_sparse_fidelity.py: sparse - dense per bin from the stored H200 fidelity runs (the
figures docs/SPARSE.md quotes), each run against the dense row it was measured against, and a PNG."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RES = ROOT / "docs" / "results"
spec = importlib.util.spec_from_file_location("plot_sparse_fidelity", ROOT / "scripts" / "plot_sparse_fidelity.py")
plot_fid = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plot_fid)


def test_deltas_of_the_stored_runs_and_the_plot(tmp_path):
    out = tmp_path / "fid.png"
    series = plot_fid.main([
        "--dense", str(RES / "sparse_eval_s4/fidelity_continuous/sparse_fidelity.json"),
        "--run", f"DCA={RES / 'sparse_eval_s4/fidelity_dca_selection/sparse_fidelity.json'}",
        "--run", f"DCA={RES / 'sparse_eval_s5/fidelity_calibrated/sparse_fidelity.json'}",
        "--out", str(out)])
    want = {"DCA: sparse (1000, 5000)": (0.011, 0.005, -0.017),      # docs/SPARSE.md, Fidelity
            "DCA: calibrated budgets": (0.008, 0.014, -0.005),
            "continuous: sparse (1000, 2000)": (0.060, 0.137, 0.116)}
    for label, (a, b, c) in want.items():
        got = series[label]["delta"]
        assert got["8K-16K"] == pytest.approx(a, abs=6e-4)
        assert got["16K-32K"] == pytest.approx(b, abs=6e-4)
        assert got["32K-64K"] == pytest.approx(c, abs=6e-4)
    assert series["DCA: sparse (1000, 5000)"]["density_last_block"] == pytest.approx(0.0861, abs=1e-4)
    assert out.stat().st_size > 10_000 and out.read_bytes()[:4] == b"\x89PNG"


def test_a_run_without_dense_row_as_base_is_refused(tmp_path, capsys):
    no_dense = RES / "sparse_eval_s4/fidelity_dca_selection/sparse_fidelity.json"
    assert "dense" not in json.loads(no_dense.read_text())["results"]
    with pytest.raises(SystemExit):
        plot_fid.main(["--dense", str(no_dense), "--out", str(tmp_path / "x.png")])
    assert "no 'dense' row" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        plot_fid.main(["--dense", str(RES / "sparse_eval_s4/fidelity_continuous/sparse_fidelity.json"),
                       "--run", "no-equals-sign"])
    assert "PREFIX=FILE" in capsys.readouterr().err
