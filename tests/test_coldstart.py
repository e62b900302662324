"""`turboctx bench coldstart`: a new server process timed to its first token, with the server's own
split of its start (weights, KV cache, warm-up incl. graph capture) read from /metrics."""
from __future__ import annotations

import pytest

from turboctx.bench.coldstart import cold_start, serve_flags, startup_phases
from turboctx.errors import TurboctxError


def test_engine_options_become_serve_flags():
    assert serve_flags({"max_model_len": 4096, "enable_prefix_caching": False, "dca": None,
                        "enforce_eager": True, "model": "random:smollm2-135m"}) == [
        "--max-model-len", "4096", "--no-enable-prefix-caching", "--enforce-eager",
        "--model", "random:smollm2-135m"]


def test_startup_phases_are_read_from_the_metrics_text():
    text = ('# HELP turboctx_startup_seconds ...\nturboctx_startup_seconds{phase="load_s"} 2.5\n'
            'turboctx_startup_seconds{phase="graph_capture_s"} 0.0\nother_metric 3\n')
    assert startup_phases(text) == {"load_s": 2.5, "graph_capture_s": 0.0}


def test_a_new_server_process_to_its_first_token():
    r = cold_start({"device": "cpu", "max_model_len": 2048}, timeout_s=300)
    assert set(r) >= {"to_ready_s", "to_first_token_s", "load_s", "kv_cache_s", "warmup_s",
                      "graph_capture_s", "before_engine_s", "first_request_s"}
    assert 0 < r["load_s"] < r["to_ready_s"] < r["to_first_token_s"]
    assert r["warmup_s"] > 0 and r["graph_capture_s"] == 0          # no CUDA graphs on the CPU
    assert r["before_engine_s"] > 0 and r["first_request_s"] > 0


def test_a_server_that_cannot_start_is_a_clear_error():
    with pytest.raises(TurboctxError, match="exited before it was ready"):
        cold_start({"device": "cpu", "model": "/no/such/model"}, timeout_s=120)
