"""Rank 0's handle on a tensor-parallel engine: starts the other ranks, sends them every step,
stops them (vLLM's driver-worker executor).

Rank 0 runs in the user's process: scheduler, sampler, detokenizer, and its own shard of the model.
The other ranks are
  - worker processes it spawns (`python -m turboctx.distributed.worker`), rendezvous through a
    TCPStore it hosts on 127.0.0.1; or
  - the other processes of a `torchrun` launch (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
    MASTER_PORT), which enter the worker loop inside `LLM(...)` (multi-node runs use this).

Failure: any error while the ranks run a step together (or start up) is fatal for the engine:
rank 0 collects what the failed ranks reported (store keys, exit codes), kills every rank and
raises TensorParallelError naming them. Later calls say the engine is stopped and why.
Stop: `shutdown()` (LLM.shutdown, the context manager, garbage collection of the engine, or
interpreter exit) sends "stop"; ranks that do not exit in time are killed. Spawned ranks also
exit on their own when rank 0's process disappears.
"""
from __future__ import annotations

import atexit
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from turboctx.distributed.parallel_state import (STARTUP_TIMEOUT, TPGroup, abort_device_group,
                                                 destroy_tp_group, init_tp_group, torchrun_env)
from turboctx.distributed.worker import UP_KEY, RankSpec, WorkerLaunch, run_rank_and_exit
from turboctx.errors import InvalidRequestError, TensorParallelError

log = logging.getLogger("turboctx")

FAILURE_WAIT_S = 3.0       # how long rank 0 waits for a failed rank's report after a collective fails
STOP_WAIT_S = 10.0         # how long ranks get to exit after "stop" before they are killed


def rank_devices(device: torch.device, world_size: int) -> list[torch.device]:
    """One device per rank: cpu for all, or consecutive GPUs from the one asked for."""
    if device.type != "cuda":
        return [device] * world_size
    base, count = device.index or 0, torch.cuda.device_count()
    if base + world_size > count:
        raise InvalidRequestError(
            f"tensor_parallel_size={world_size} needs {world_size} GPUs from cuda:{base}, but "
            f"{count} are visible; lower tensor_parallel_size or make more GPUs visible "
            f"(CUDA_VISIBLE_DEVICES)")
    return [torch.device("cuda", base + r) for r in range(world_size)]


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class TPExecutor:
    def __init__(self, group: TPGroup, procs: list[subprocess.Popen], restore_threads: int | None = None):
        self.group, self.procs = group, procs      # procs[r - 1] is rank r (empty under torchrun)
        self._lock = threading.RLock()
        self.stopped: str | None = None            # why the engine cannot run any more
        self._closed = False
        self._stopping = False
        self._restore_threads = restore_threads
        if procs and group.device.type == "cuda":
            threading.Thread(target=self._watch_workers, name="turboctx-tp-watch", daemon=True).start()
        atexit.register(self.shutdown)        # the ranks stop at exit even if the engine is still referenced

    @property
    def world_size(self) -> int:
        return self.group.world_size

    # -- start ------------------------------------------------------------------------------
    @classmethod
    def launch(cls, spec: RankSpec, device: torch.device) -> "TPExecutor":
        """Returns rank 0's executor. Under torchrun, on every other rank, this serves rank 0
        until it shuts the engine down, then ends the process."""
        tp = spec.config.parallel.tensor_parallel_size
        env = torchrun_env()
        if env is not None:
            rank, world, local_rank = env
            if world != tp:
                raise InvalidRequestError(
                    f"torchrun started {world} processes but tensor_parallel_size={tp}; "
                    f"start it with --nproc-per-node {tp} (x nodes = {tp} in all)")
            dev = torch.device("cuda", local_rank) if device.type == "cuda" else device
            group = init_tp_group(rank, world, dev)
            if rank != 0:
                run_rank_and_exit(group, spec)       # never returns
            return cls(group, [])
        return cls._spawn(spec, rank_devices(device, tp))

    @classmethod
    def _spawn(cls, spec: RankSpec, devices: list[torch.device]) -> "TPExecutor":
        import torch.distributed as dist
        tp = len(devices)
        if dist.is_initialized():
            raise TensorParallelError(
                "torch.distributed is already initialized in this process (is another "
                "tensor-parallel LLM running? call its shutdown() first); one tensor-parallel "
                "engine per process")
        store = dist.TCPStore("127.0.0.1", 0, tp, is_master=True, timeout=STARTUP_TIMEOUT,
                              wait_for_workers=False)
        # CPU ranks share the cores: each gets its part (rank 0 too, until shutdown), else the
        # ranks' spinning OpenMP threads starve each other (measured 10x slower on 2 cores)
        threads, restore = max(1, torch.get_num_threads() // tp), None
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2])     # the turboctx this process imported
        env["PYTHONPATH"] = os.pathsep.join([src] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        if devices[0].type == "cpu":
            env["OMP_NUM_THREADS"] = str(threads)
            restore = torch.get_num_threads()
            torch.set_num_threads(threads)
        procs: list[subprocess.Popen] = []
        try:
            for r in range(1, tp):
                launch = WorkerLaunch(r, tp, "127.0.0.1", store.port, os.getpid(), str(devices[r]),
                                      threads, spec)
                p = subprocess.Popen([sys.executable, "-m", "turboctx.distributed.worker"],
                                     stdin=subprocess.PIPE, env=env)
                procs.append(p)
                p.stdin.write(pickle.dumps(launch))
                p.stdin.close()
            cls._wait_joined(store, procs)
            group = init_tp_group(0, tp, devices[0], store)
        except BaseException:
            _kill(procs)
            if restore is not None:
                torch.set_num_threads(restore)
            raise
        return cls(group, procs, restore)

    @staticmethod
    def _wait_joined(store, procs: list[subprocess.Popen]) -> None:
        """Until every worker has reached the store; a worker that exits first is an error."""
        from turboctx.distributed.parallel_state import ERROR_KEY
        deadline = time.monotonic() + STARTUP_TIMEOUT.total_seconds()
        keys = [UP_KEY.format(rank=r) for r in range(1, len(procs) + 1)]
        while not store.check(keys):
            for r, p in enumerate(procs, 1):
                if p.poll() is not None:
                    key = ERROR_KEY.format(rank=r)
                    why = store.get(key).decode() if store.check([key]) else \
                        f"rank {r} (pid {p.pid}) {_describe_exit(p.returncode)} before joining rank 0 (its output is above)"
                    raise TensorParallelError(f"tensor-parallel start failed: {why}")
            if time.monotonic() > deadline:
                raise TensorParallelError(f"tensor-parallel workers did not start within "
                                          f"{STARTUP_TIMEOUT.total_seconds():.0f} s")
            time.sleep(0.02)

    def agree_kv_tokens(self, kv_tokens: int) -> int:
        """The cache size every rank can hold (block tables are shared, so all ranks use one)."""
        return self._guarded(lambda: self.group.min_int(kv_tokens), "while starting")

    def ready(self) -> None:
        self._guarded(lambda: self.group.min_int(1), "while starting")

    # -- run ----------------------------------------------------------------------------------
    def execute_model(self, inp, local_forward):
        """Sends one step to every rank and runs rank 0's part of it (local_forward)."""
        def run():
            self.group.broadcast(("step", inp))
            return local_forward()
        return self._guarded(run, "in a model step")

    def collective_rpc(self, method: str, args: tuple, local_call) -> list:
        """Runs Worker.<method>(*args) on every rank; returns the results by rank."""
        def run():
            self.group.broadcast(("call", (method, args)))
            return self.group.all_gather(local_call(*args))
        return self._guarded(run, f"in {method}()")

    def check_running(self) -> None:
        if self.stopped is not None:
            raise TensorParallelError(f"the tensor-parallel engine is stopped ({self.stopped}); "
                                      f"create a new LLM")

    def _guarded(self, fn, stage: str):
        with self._lock:
            self.check_running()
            try:
                return fn()
            except BaseException as e:
                err = self.fail(e, stage)
                if err is e:
                    raise
                raise err from e

    def _watch_workers(self, period_s: float = 0.5) -> None:
        """CUDA: a worker that dies leaves rank 0 waiting inside NCCL; abort the communicators so
        the step fails (then `fail` reports the worker). Not needed with gloo."""
        while not (self._closed or self._stopping):
            dead = [p for p in self.procs if p.poll() is not None]
            if dead and not (self._closed or self._stopping):
                log.error("tensor-parallel worker pid %d %s; aborting NCCL", dead[0].pid,
                          _describe_exit(dead[0].returncode))
                abort_device_group(self.group)
                return
            time.sleep(period_s)

    # -- stop ---------------------------------------------------------------------------------
    def fail(self, e: BaseException, stage: str) -> BaseException:
        """Stops every rank after a failure; returns what to raise: TensorParallelError naming the
        ranks that failed, or rank 0's own error when it was rank 0 that failed."""
        reports = [] if isinstance(e, KeyboardInterrupt) else self._failure_reports()
        if reports:
            err: BaseException = TensorParallelError(
                f"tensor-parallel {'; '.join(reports)}; every rank has been stopped")
            self.stopped = f"after {'; '.join(reports)}"
        else:
            err = e
            self.stopped = f"after rank 0 failed {stage}: {type(e).__name__}: {e}"
        self._close(graceful=False)
        return err

    def _failure_reports(self) -> list[str]:
        """What failed ranks left in the store, or how their processes ended (waits a little:
        a collective fails as soon as a peer's connection closes, its report may come after)."""
        deadline = time.monotonic() + FAILURE_WAIT_S
        found_at = None
        while True:
            reports = []
            for r in range(1, self.world_size):
                msg = self.group.read_error(r)
                p = self.procs[r - 1] if self.procs else None
                if msg is None and p is not None and p.poll() is not None:
                    msg = f"rank {r} (pid {p.pid}) {_describe_exit(p.returncode)}"
                if msg is not None:
                    reports.append(msg)
            now = time.monotonic()
            if reports and found_at is None:
                found_at = now
            if now > deadline or (found_at is not None and now - found_at > 0.3):
                # a rank that failed first is the cause; peers that only lost their connection follow
                return sorted(reports, key=lambda m: "Connection closed" in m)
            time.sleep(0.05)

    def shutdown(self) -> None:
        """Stops every rank (idempotent). Waits for a step in flight on another thread up to 30 s."""
        if self._closed:
            return
        atexit.unregister(self.shutdown)
        if self._lock.acquire(timeout=30):
            try:
                if self.stopped is None:
                    self.stopped = "it was shut down"
                    self._stopping = True
                    try:
                        self.group.broadcast(("stop", None))
                    except Exception as e:  # noqa: BLE001 - ranks already gone: kill what is left
                        log.warning("tensor-parallel stop message failed (%s); killing the workers", e)
                        self._close(graceful=False)
                        return
                self._close(graceful=True)
            finally:
                self._lock.release()
        else:
            log.warning("a tensor-parallel step is still running after 30 s; killing the workers")
            self.stopped = "it was shut down"
            self._close(graceful=False)

    def _close(self, graceful: bool) -> None:
        if self._closed:
            return
        self._closed = True
        if not graceful:
            abort_device_group(self.group)    # NCCL work may still wait on a killed rank
        if graceful:
            deadline = time.monotonic() + STOP_WAIT_S
            for p in self.procs:
                try:
                    p.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        _kill(self.procs)
        destroy_tp_group(self.group)
        if self._restore_threads is not None:
            torch.set_num_threads(self._restore_threads)


def _kill(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            log.error("tensor-parallel worker pid %d did not die after SIGKILL", p.pid)
