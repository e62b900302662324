"""Tensor-parallel ranks start and stop cleanly: a failing rank takes the others down with an error
that names it, and no worker process outlives its engine (shutdown, Ctrl-C, rank 0 killed)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from hf_reference import make_tiny_hf
from turboctx import LLM, SamplingParams
from turboctx.distributed.worker import FAULT_ENV
from turboctx.errors import TensorParallelError

SPEC = ("qwen2", 4, 2, 16, True, False)
ENGINE = dict(device="cpu", dtype="float32", max_num_batched_tokens=64, max_model_len=1024,
              kv_cache_tokens=2048, tensor_parallel_size=2)
SP = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
PROMPT = list(range(3, 200))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tp-lifecycle")
    make_tiny_hf("tp-lifecycle", folder, spec=SPEC)
    return str(folder)


def worker_pids(parent: int | None = None) -> list[int]:
    """Live tensor-parallel worker processes whose parent is `parent` (default: this process)."""
    parent = os.getpid() if parent is None else parent
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if int(fields[1]) == parent and fields[0] != "Z" and b"turboctx.distributed.worker" in cmd:
            out.append(int(pid))
    return out


def alive(pids: list[int]) -> list[int]:
    out = []
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    out.append(p)
        except OSError:
            pass
    return out


def wait_gone(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive(pids)


def test_worker_failing_at_start_is_named_and_nothing_is_left(tiny, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "1:load")
    with pytest.raises(TensorParallelError, match=r"rank 1 failed while loading the model: "
                                                  r"RuntimeError: injected fault.*every rank has been stopped"):
        LLM(tiny, **ENGINE)
    assert worker_pids() == []


def test_worker_failing_in_a_step_stops_the_engine(tiny, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "1:step:3")
    llm = LLM(tiny, **ENGINE)
    pids = worker_pids()
    assert len(pids) == 1
    with pytest.raises(TensorParallelError, match="rank 1 failed in model step 3: RuntimeError: injected fault"):
        llm.generate(PROMPT, SP)
    assert wait_gone(pids) == []
    with pytest.raises(TensorParallelError, match="engine is stopped .*rank 1 failed in model step 3"):
        llm.generate(PROMPT, SP)
    llm.shutdown()                                   # idempotent after a failure


def test_killed_worker_is_reported_by_signal(tiny):
    llm = LLM(tiny, **ENGINE)
    ref = llm.generate(PROMPT, SP)[0].token_ids
    assert len(ref) == 4
    (pid,) = worker_pids()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(TensorParallelError, match=rf"rank 1 \(pid {pid}\) was killed by SIGKILL"):
        llm.generate(PROMPT, SP)
    assert worker_pids() == []


def test_context_manager_stops_every_rank_and_allows_a_new_engine(tiny):
    with LLM(tiny, **ENGINE) as llm:
        pids = worker_pids()
        first = llm.generate(PROMPT, SP)[0].token_ids
    assert wait_gone(pids) == []
    with pytest.raises(TensorParallelError, match="shut down"):
        llm.generate(PROMPT, SP)
    with LLM(tiny, **ENGINE) as again:              # torch.distributed was released
        assert again.generate(PROMPT, SP)[0].token_ids == first


DRIVER = textwrap.dedent("""
    import sys, time
    from turboctx import LLM
    llm = LLM(sys.argv[1], device="cpu", dtype="float32", kv_cache_tokens=2048, max_model_len=1024,
              tensor_parallel_size=2)
    print("ready", flush=True)
    time.sleep(600)
""")


def test_workers_exit_when_rank_0_is_killed(tiny):
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, tiny], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        pids = worker_pids(proc.pid)
        assert len(pids) == 1
        proc.kill()
        proc.wait(10)
        assert wait_gone(pids, 10) == []            # no orphan: the worker saw its parent go
    finally:
        proc.kill()


def test_ctrl_c_ends_every_rank():
    """Ctrl-C on a terminal signals the whole foreground process group: rank 0 and the workers."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "turboctx.cli", "generate", "Once upon a time", "--device", "cpu",
           "--max-tokens", "1000", "--max-model-len", "1100", "--tensor-parallel-size", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            start_new_session=True,    # its own process group, like a terminal job
                            # a terminal's SIGINT, even when pytest itself runs with it ignored
                            # (a shell's background job): Python only handles SIGINT it got as default
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.read(1), proc.stderr.read().decode()    # tokens are streaming
        pids = worker_pids(proc.pid)
        assert len(pids) == 1
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err.decode()         # typer's exit status for Ctrl-C
        assert wait_gone(pids) == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


TORCHRUN_SCRIPT = textwrap.dedent("""
    import json, sys
    from turboctx import LLM, SamplingParams
    llm = LLM(sys.argv[1], device="cpu", dtype="float32", kv_cache_tokens=2048, max_model_len=1024,
              max_num_batched_tokens=64, tensor_parallel_size=int(sys.argv[2]))
    out = llm.generate(list(range(3, 200)), SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
    print("TOKENS", json.dumps(out[0].token_ids), flush=True)      # only rank 0 gets here
""")


def test_torchrun_starts_every_rank(tiny, tmp_path):
    """torchrun's RANK / WORLD_SIZE / MASTER_ADDR: rank 0 answers, rank 1 serves it and exits 0."""
    from server_fixtures import free_port
    script = tmp_path / "run.py"
    script.write_text(TORCHRUN_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", str(free_port()), str(script), tiny, "2"],
                         capture_output=True, text=True, env=env, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [line for line in res.stdout.splitlines() if line.startswith("TOKENS")]
    single = LLM(tiny, **{**ENGINE, "tensor_parallel_size": 1}).generate(
        list(range(3, 200)), SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))[0]
    assert lines == [f"TOKENS {json.dumps(single.token_ids)}"]
