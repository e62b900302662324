"""The `turboctx` command line in this process or in a new one, with the same result either way:
the exit code, stdout and stderr, as a user's shell sees them.

In this process (`run_cli`) there is no interpreter start, no torch import (~5 s each): most
command-line tests use it. A few tests keep `run_cli_subprocess`, so that `python -m turboctx.cli`
itself (the entry point, its exit codes) stays covered.

The in-process run restores what a command may change in the process: the environment, the
working directory, sys.stdin/stdout/stderr, the logging setup and torch's thread count.
"""
from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"      # this checkout's turboctx


@dataclass
class CliResult:
    """What subprocess.run(capture_output=True, text=True) gives: returncode, stdout, stderr."""
    returncode: int
    stdout: str
    stderr: str


def run_cli_subprocess(*args: str, cwd: Path | None = None, stdin: str | None = None,
                       timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m turboctx.cli ARGS` in a new process, with this checkout's source first on the path."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "turboctx.cli", *args], input=stdin, text=True,
                          capture_output=True, timeout=timeout, env=env, cwd=cwd)


def _text_stream(data: str = "") -> io.TextIOWrapper:
    """A text stream with a .buffer, as sys.std* have (some readers use the bytes)."""
    return io.TextIOWrapper(io.BytesIO(data.encode()), encoding="utf-8", write_through=True)


def _read(stream: io.TextIOWrapper) -> str:
    stream.flush()
    return stream.buffer.getvalue().decode()


def run_cli(*args: str, cwd: Path | None = None, stdin: str | None = None) -> CliResult:
    """`turboctx ARGS` in this process, through the entry point's own `main(argv)`.

    A warning logged by turboctx reaches stderr as in a new process, where Python's last-resort
    handler prints it (under pytest, pytest's log capture would otherwise take it)."""
    import torch

    from turboctx.cli import main

    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    saved_streams = sys.stdin, sys.stdout, sys.stderr
    root = logging.getLogger()
    saved_root = root.level, list(root.handlers)
    saved_loggers = {name: (lg.level, list(lg.handlers), lg.propagate, lg.disabled)
                     for name, lg in logging.root.manager.loggerDict.items()
                     if isinstance(lg, logging.Logger)}
    saved_threads = torch.get_num_threads()

    out, err = _text_stream(), _text_stream()
    last_resort = logging.StreamHandler(err)
    last_resort.setLevel(logging.WARNING)
    root.addHandler(last_resort)
    code = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        sys.stdin, sys.stdout, sys.stderr = _text_stream(stdin or ""), out, err
        try:
            main(list(args))
        except SystemExit as e:
            if e.code is None:
                code = 0
            elif isinstance(e.code, int):
                code = e.code
            else:                      # SystemExit("message"): Python prints it, exit code 1
                print(e.code, file=err)
                code = 1
        except Exception:              # noqa: BLE001 - what the interpreter would do: a traceback, 1
            traceback.print_exc(file=err)
            code = 1
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        root.removeHandler(last_resort)
        root.setLevel(saved_root[0])       # setLevel: clears the loggers' level caches
        root.handlers[:] = saved_root[1]
        for name, lg in list(logging.root.manager.loggerDict.items()):
            if isinstance(lg, logging.Logger) and name in saved_loggers:
                level, handlers, lg.propagate, lg.disabled = saved_loggers[name]
                lg.setLevel(level)
                lg.handlers[:] = handlers
        torch.set_num_threads(saved_threads)
    return CliResult(code, _read(out), _read(err))
