"""A live `turboctx serve` subprocess on 127.0.0.1 (free port) for the server tests."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import requests

MODEL = "SmolLM2-135M-Instruct"
API_KEY = "sk-test-turboctx"
MAX_MODEL_LEN = 2048
KV_CACHE_TOKENS = 8192
MAX_BODY_BYTES = 1 << 20
SHUTDOWN_TIMEOUT_S = 2


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    proc: subprocess.Popen
    url: str
    log_path: str

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {API_KEY}"}

    def log(self) -> str:
        try:
            with open(self.log_path) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def metrics(self) -> dict[str, float]:
        text = requests.get(self.url + "/metrics", headers=self.headers, timeout=10).text
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def wait_idle(self, timeout_s: float = 10.0) -> dict[str, float]:
        """Polls /metrics until nothing runs or waits and no KV block is in use."""
        deadline = time.monotonic() + timeout_s
        while True:
            m = self.metrics()
            idle = (m["turboctx_num_requests_running"] == 0 and m["turboctx_num_requests_waiting"] == 0
                    and m["turboctx_kv_cache_blocks_used"] == 0)
            if idle or time.monotonic() > deadline:
                return m
            time.sleep(0.1)

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise


def start_server(tmp_dir: str, *extra: str, startup_timeout_s: float = 180.0,
                 env: dict[str, str] | None = None) -> LiveServer:
    """env: variables set for the server over this process's environment."""
    port = free_port()
    log_path = os.path.join(tmp_dir, f"server-{port}.log")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    cmd = [sys.executable, "-m", "turboctx.server.cli", "--host", "127.0.0.1", "--port", str(port),
           "--max-model-len", str(MAX_MODEL_LEN), "--kv-cache-tokens", str(KV_CACHE_TOKENS),
           "--device", "cpu", "--threads", "1", "--api-key", API_KEY,
           "--max-body-bytes", str(MAX_BODY_BYTES), "--shutdown-timeout", str(SHUTDOWN_TIMEOUT_S),
           "--log-level", "warning", *extra]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    srv = LiveServer(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + startup_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{srv.log()}")
        try:
            if requests.get(srv.url + "/health", timeout=2).status_code == 200:
                return srv
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    srv.stop()
    raise RuntimeError(f"server did not come up in {startup_timeout_s} s:\n{srv.log()}")


def start_default_server(tmp_dir: str, gguf_path: str, env: dict[str, str] | None = None) -> LiveServer:
    """The server most tests share: a vLLM command line carries over (the model positional,
    vLLM's flag names)."""
    return start_server(tmp_dir, str(gguf_path), "--served-model-name", MODEL,
                        "--enable-prefix-caching", "--max-num-batched-tokens", "8192",
                        "--gpu-memory-utilization", "0.9", "--max-num-seqs", "16", env=env)


class SharedServer:
    """The default server, started on first use and shared by the tests. A test that ends it (the
    shutdown test) takes it: the next test that needs a server starts another. Every one of them
    runs with the same environment (the test run's TURBOCTX_HOME), whichever test starts it."""

    def __init__(self, tmp_dir: str, gguf_path: str, env: dict[str, str]):
        self.tmp_dir, self.gguf_path, self.env = tmp_dir, gguf_path, env
        self.current: LiveServer | None = None

    def get(self) -> LiveServer:
        if self.current is None or self.current.proc.poll() is not None:
            self.current = start_default_server(self.tmp_dir, self.gguf_path, env=self.env)
        return self.current

    def take(self) -> LiveServer:
        """The running server, for a test that ends it; no other test gets it after."""
        srv, self.current = self.get(), None
        return srv


def post(server: LiveServer, path: str, body, **kw):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(server.url + path, data=data, timeout=60,
                         headers={**server.headers, "Content-Type": "application/json"}, **kw)
