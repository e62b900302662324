"""A `turboctx serve` subprocess on 127.0.0.1 (a free port), for evaluating the engine behind
its own OpenAI-compatible endpoint. Started with this interpreter (`python -m
turboctx.server.cli`), so it runs the same code as the caller; stopped with SIGTERM (the
server's orderly shutdown), killed only if that does not end it.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


class ServerFailed(RuntimeError):
    """The server process exited or did not answer /health in time (log tail attached)."""


@dataclass
class RunningServer:
    url: str                    # base URL for OpenAI clients: http://127.0.0.1:PORT/v1
    proc: subprocess.Popen      # returncode is set once the context has stopped it
    log_path: Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(port: int, model: str | None = None, **flags) -> list[str]:
    """The argv of `turboctx serve` with flags given as keywords (None = left out)."""
    cmd = [sys.executable, "-m", "turboctx.server.cli", "--host", "127.0.0.1", "--port", str(port)]
    if model is not None:
        cmd += ["--model", str(model)]
    for k, v in flags.items():
        if v is not None:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    return cmd


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-n:]
    except OSError:
        return ""


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def local_server(model: str | None, log_path: str | Path, startup_timeout_s: float = 300.0,
                 stop_timeout_s: float = 60.0, **flags) -> Iterator[RunningServer]:
    """Starts `turboctx serve --model MODEL --FLAG VALUE ...`, waits for /health, yields it."""
    port = free_port()
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # the child imports the same turboctx as this process, installed or not
    src_root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": src_root + (os.pathsep + path if path else "")}
    flags.setdefault("log_level", "warning")
    flags.setdefault("shutdown_timeout", 5)
    with log_path.open("w") as log:
        proc = subprocess.Popen(serve_command(port, model, **flags), stdout=log,
                                stderr=subprocess.STDOUT, env=env)
    root = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not _healthy(root):
            if proc.poll() is not None:
                raise ServerFailed(f"`turboctx serve` exited with {proc.returncode}:\n"
                                   f"{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise ServerFailed(f"`turboctx serve` did not answer /health within "
                                   f"{startup_timeout_s:.0f} s:\n{_tail(log_path)}")
            time.sleep(0.5)
        yield RunningServer(root + "/v1", proc, log_path)
    finally:
        stop(proc, stop_timeout_s)


def stop(proc: subprocess.Popen, timeout_s: float = 60.0) -> int:
    """SIGTERM, wait; SIGKILL only when the orderly shutdown hangs. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(30)
