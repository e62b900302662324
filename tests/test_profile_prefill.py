"""`turboctx bench prefill --profile DIR`: one more run per length under torch.profiler, an op
table and a Chrome trace per length (CPU, random weights of the default model's shape)."""
import json

from typer.testing import CliRunner


def test_bench_prefill_profile_writes_op_tables(tmp_path):
    from turboctx.bench.cli import bench_app
    out = tmp_path / "p.json"
    r = CliRunner().invoke(bench_app, ["prefill", "--model", "random:smollm2-135m", "--lengths", "300",
                                       "--repeat", "1", "--device", "cpu", "--dca", "--attention",
                                       "sparse", "--sparse-threshold", "128", "--json", str(out),
                                       "--profile", str(tmp_path / "prof")])
    assert r.exit_code == 0, r.output
    row = json.loads(out.read_text())["rows"][0]
    table = tmp_path / "prof" / "profile_dca+sparse_300.txt"
    assert row["profile"] == str(table) and "aten::" in table.read_text()
    assert (tmp_path / "prof" / "profile_dca+sparse_300.json").stat().st_size > 1000
