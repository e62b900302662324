"""scripts/profile_prefill.py runs end to end: CPU, random weights of the default model's shape,
dense and sparse with DCA; a bad model is a one-line error."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("extra", [[], ["--dca", "--attention", "sparse", "--sparse-threshold", "256"]])
def test_profile_prefill_smoke(tmp_path, extra):
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "profile_prefill.py"), "--model",
                        "random:smollm2-135m", "--length", "600", "--decode", "2", "--device", "cpu",
                        "--repeat", "1", "--top", "5", "--out", str(tmp_path), *extra],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ttft" in r.stdout and "Self CPU" in r.stdout
    tables = list(tmp_path.glob("profile_*.txt"))
    assert len(tables) == 1 and "aten::" in tables[0].read_text()


def test_profile_prefill_bad_model_is_a_clear_error(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "profile_prefill.py"), "--model",
                        "random:nope", "--out", str(tmp_path)], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 1 and "unknown random preset" in r.stderr and "Traceback" not in r.stderr
