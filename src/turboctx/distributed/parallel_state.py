"""The process groups of a tensor-parallel engine (torch.distributed; one engine per process).

Two groups over the same ranks:
  - `device_group` (the default group): the all-reduces of the model, NCCL on CUDA, gloo on CPU;
  - `cpu_group` (gloo): the control plane. Rank 0 broadcasts each step's inputs (a small pickled
    object) on it; the other ranks wait on it between steps, possibly for days when a server is
    idle, so its timeout is effectively unlimited (the death of a peer still ends the wait at once:
    gloo reports the closed connection).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from turboctx.errors import TensorParallelError

CONTROL_TIMEOUT = datetime.timedelta(days=3650)
STARTUP_TIMEOUT = datetime.timedelta(minutes=15)
ERROR_KEY = "turboctx/tp_error/{rank}"


@dataclass
class TPGroup:
    rank: int
    world_size: int
    device: torch.device
    device_group: object
    cpu_group: object
    store: object | None              # the rendezvous store (failure reports go there)
    owns_default_group: bool          # we initialized torch.distributed, so we destroy it

    def broadcast(self, obj=None):
        """Rank 0 sends obj to every rank; every rank returns it."""
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.cpu_group)
        return box[0]

    def all_gather(self, obj) -> list:
        out = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.cpu_group)
        return out

    def min_int(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.cpu_group)
        return int(t.item())

    def report_error(self, message: str) -> None:
        """Leave this rank's failure where rank 0 can read it, even after this process is gone."""
        if self.store is not None:
            try:
                self.store.set(ERROR_KEY.format(rank=self.rank), message)
            except Exception:  # noqa: BLE001 - the store may be gone with rank 0
                pass

    def read_error(self, rank: int) -> str | None:
        if self.store is None:
            return None
        key = ERROR_KEY.format(rank=rank)
        try:
            return self.store.get(key).decode() if self.store.check([key]) else None
        except Exception:  # noqa: BLE001
            return None


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def torchrun_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when this process was started by torchrun with >1 processes."""
    env = os.environ
    if not all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        return None
    world = int(env["WORLD_SIZE"])
    if world <= 1:
        return None
    return int(env["RANK"]), world, int(env.get("LOCAL_RANK", env["RANK"]))


def init_tp_group(rank: int, world_size: int, device: torch.device, store=None) -> TPGroup:
    """Joins (or, with store=None, finds or creates from the environment) the default group."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        kw = dict(store=store) if store is not None else dict(init_method="env://")
        dist.init_process_group(backend_for(device), rank=rank, world_size=world_size, **kw)
    elif dist.get_world_size() != world_size or dist.get_rank() != rank:
        raise TensorParallelError(
            f"torch.distributed is already initialized with world size {dist.get_world_size()} "
            f"(rank {dist.get_rank()}), but tensor_parallel_size={world_size}; they must match")
    if store is None:
        try:
            store = dist.distributed_c10d._get_default_store()
        except Exception:  # noqa: BLE001 - private API: failure reports are then only in the logs
            store = None
    cpu_group = dist.new_group(list(range(world_size)), backend="gloo", timeout=CONTROL_TIMEOUT)
    return TPGroup(rank, world_size, device, dist.group.WORLD, cpu_group, store, owns)


def abort_device_group(group: TPGroup) -> None:
    """NCCL: abort the communicators, so that collectives and device syncs waiting on a dead rank
    fail instead of hanging (gloo needs nothing: it reports a closed connection at once)."""
    if group.device.type != "cuda" or not dist.is_initialized():
        return
    try:
        dist.distributed_c10d._abort_process_group()    # experimental API (torch >= 2.5)
    except Exception:  # noqa: BLE001 - best effort: the NCCL watchdog timeout remains
        pass


def destroy_tp_group(group: TPGroup) -> None:
    if not dist.is_initialized():
        return
    try:
        dist.destroy_process_group(group.cpu_group)
    except Exception:  # noqa: BLE001 - a group broken by a dead peer may refuse; the default goes next
        pass
    if group.owns_default_group:
        dist.destroy_process_group()
    # free the groups and the store now: left to interpreter teardown, their C++ threads aborted
    # the process now and then (std::terminate, seen under torchrun)
    group.device_group = group.cpu_group = group.store = None
