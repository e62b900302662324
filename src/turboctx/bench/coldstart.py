"""`turboctx bench coldstart`: a new `turboctx serve` process to its first token.

Spawns the server with the given engine flags, times it until /health answers (ready) and until
the first token of a one-token completion, reads the server's own split of its start from
/metrics (`turboctx_startup_seconds`: weights load, KV cache, warm-up, of it graph capture) and
stops it. What is left of the time to ready is the process start before the engine (imports,
config, the HTTP server).
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from turboctx.config.engine import ENGINE_OPTIONS
from turboctx.errors import TurboctxError


def serve_flags(options: dict) -> list[str]:
    """Engine options as `turboctx serve` flags."""
    argv: list[str] = []
    for name, value in options.items():
        if value is None:
            continue
        spec = ENGINE_OPTIONS[name]
        if spec.type is bool:
            argv.append(spec.flag if value else "--no-" + spec.flag[2:])
        else:
            argv += [spec.flag, str(value)]
    return argv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def startup_phases(metrics_text: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^turboctx_startup_seconds\{phase="([a-z_]+)"\} ([0-9.eE+-]+)$', metrics_text, re.M)}


def cold_start(options: dict, timeout_s: float = 900.0) -> dict:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "turboctx.cli", "serve", "--port", str(port), "--log-level",
           "warning", *serve_flags(options)]
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        while True:
            if proc.poll() is not None:
                log.seek(0)
                tail = log.read().strip().splitlines()[-5:]
                raise TurboctxError("the server exited before it was ready: " + " | ".join(tail))
            if time.perf_counter() - t0 > timeout_s:
                raise TurboctxError(f"the server was not ready within {timeout_s:.0f} s")
            try:
                _get(base + "/health")
                break
            except OSError:
                time.sleep(0.2)
        t_ready = time.perf_counter()
        body = json.dumps({"model": json.loads(_get(base + "/v1/models"))["data"][0]["id"],
                           "prompt": [1] * 16, "max_tokens": 1, "temperature": 0}).encode()
        req = urllib.request.Request(base + "/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        t_req = time.perf_counter()
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            r.read()
        t_first = time.perf_counter()
        phases = startup_phases(_get(base + "/metrics").decode())
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
        os.unlink(log.name)
    engine_s = sum(phases.get(k, 0.0) for k in ("load_s", "kv_cache_s", "warmup_s"))
    return {"command": " ".join(["turboctx", *cmd[3:]]), "to_ready_s": t_ready - t0,
            "to_first_token_s": t_first - t0, "first_request_s": t_first - t_req,
            "before_engine_s": t_ready - t0 - engine_s, **phases}
