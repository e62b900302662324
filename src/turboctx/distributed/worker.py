"""Ranks 1..N-1 of a tensor-parallel engine: build this rank's Worker, then run what rank 0 sends.

Started by rank 0 as `python -m turboctx.distributed.worker` (the launch spec is pickled on stdin),
or, under torchrun, inside `LLM(...)` on every rank but 0 (which never returns there: the process
exits when rank 0 shuts the engine down).

Rank 0 broadcasts commands on the control group: ("step", ModelInput) runs the model once,
("call", (method, args)) runs a Worker method and gathers the results, ("stop", None) ends the rank.
A rank that fails writes "rank R failed <while>: <error>" into the rendezvous store, where rank 0
reads it, and exits; its peers then see their collectives fail and rank 0 stops every rank.
A spawned rank also exits when its parent (rank 0) is gone, and ignores SIGINT: Ctrl-C reaches
the whole process group, and rank 0 decides how the ranks stop.
"""
from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass

import torch

from turboctx.config import EngineConfig

WAITING = "while waiting for rank 0"
FAULT_ENV = "TURBOCTX_TP_FAULT"     # testing hook: "<rank>:load" or "<rank>:step:<n>" raises there
UP_KEY = "turboctx/up/{rank}"


@dataclass
class RankSpec:
    """What every rank builds its Worker from (picklable): the resolved configuration."""
    config: EngineConfig


@dataclass
class WorkerLaunch:
    rank: int
    world_size: int
    master_addr: str
    master_port: int
    parent_pid: int
    device: str
    num_threads: int
    spec: RankSpec


def _fault(rank: int, where: str, step: int = 0) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    parts = spec.split(":")
    if len(parts) >= 2 and parts[0] == str(rank) and parts[1] == where and (
            where != "step" or (len(parts) > 2 and int(parts[2]) == step)):
        raise RuntimeError(f"injected fault ({FAULT_ENV}={spec})")


def serve_rank(group, spec: RankSpec) -> None:
    """Build this rank's Worker, join rank 0's start-up handshake, then serve steps until "stop"."""
    from turboctx.engine.worker import Worker
    from turboctx.weights import open_checkpoint
    stage = "while loading the model"
    try:
        _fault(group.rank, "load")
        worker = Worker(open_checkpoint(spec.config.model.model), spec.config, group.device, group)
        kv_tokens = group.min_int(worker.plan_kv_tokens())    # every rank: the same number of blocks
        stage = "while allocating the KV cache"
        worker.init_cache(kv_tokens)
        group.min_int(1)                                       # ready
        steps = 0
        while True:
            stage = WAITING
            cmd, arg = group.broadcast()
            if cmd == "step":
                steps += 1
                stage = f"in model step {steps}"
                _fault(group.rank, "step", steps)
                worker.runner.forward(arg)
            elif cmd == "call":
                method, args = arg
                stage = f"in {method}()"
                group.all_gather(getattr(worker, method)(*args))
            elif cmd == "stop":
                return
            else:
                raise RuntimeError(f"unknown command {cmd!r} from rank 0")
    except BaseException as e:
        raise RankFailed(stage) from e


class RankFailed(Exception):
    """Carries where a rank was (`stage`) when its cause was raised."""

    def __init__(self, stage: str):
        super().__init__(stage)
        self.stage = stage


def describe_failure(rank: int, e: BaseException) -> str:
    stage, cause = (e.stage, e.__cause__) if isinstance(e, RankFailed) else ("while starting", e)
    return f"rank {rank} failed {stage}: {type(cause).__name__}: {cause}"


def run_rank_and_exit(group, spec: RankSpec) -> None:
    """Serve until rank 0 stops the engine, then end this process (0 if clean, 1 on failure)."""
    from turboctx.distributed.parallel_state import destroy_tp_group
    try:
        serve_rank(group, spec)
    except BaseException as e:  # noqa: BLE001 - any failure: tell rank 0 and leave
        if isinstance(e, RankFailed) and e.stage == WAITING:   # rank 0 is gone: nothing to report
            print(f"turboctx tensor-parallel rank {group.rank}: rank 0 went away; exiting", file=sys.stderr)
        else:
            group.report_error(describe_failure(group.rank, e))
            traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)      # no interpreter teardown: process groups broken by the failure can hang it
    destroy_tp_group(group)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _exit_with_parent(parent_pid: int, period_s: float = 0.5) -> None:
    def watch():
        while True:
            time.sleep(period_s)
            if os.getppid() != parent_pid:
                os._exit(1)
    threading.Thread(target=watch, name="turboctx-parent-watch", daemon=True).start()


def main() -> None:
    launch: WorkerLaunch = pickle.load(sys.stdin.buffer)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(launch.parent_pid)
    device = torch.device(launch.device)
    if device.type == "cpu":
        torch.set_num_threads(launch.num_threads)
    import torch.distributed as dist

    from turboctx.distributed.parallel_state import STARTUP_TIMEOUT, ERROR_KEY, init_tp_group
    store = None
    try:
        store = dist.TCPStore(launch.master_addr, launch.master_port, launch.world_size,
                              is_master=False, timeout=STARTUP_TIMEOUT)
        store.set(UP_KEY.format(rank=launch.rank), str(os.getpid()))
        group = init_tp_group(launch.rank, launch.world_size, device, store)
    except BaseException as e:  # noqa: BLE001
        if store is not None:
            store.set(ERROR_KEY.format(rank=launch.rank),
                      f"rank {launch.rank} failed while joining rank 0: {type(e).__name__}: {e}")
        traceback.print_exc()
        os._exit(1)
    run_rank_and_exit(group, launch.spec)


if __name__ == "__main__":
    main()
