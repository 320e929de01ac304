"""torch.distributed set-up for one rank (the rendezvous address comes from outside)."""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def init_process_group(rank: int, world_size: int, master_addr: str, master_port: int,
                       local_rank: int = 0, local_world_size: int = 1, timeout_s: float = 300.0) -> str:
    if dist.is_initialized():
        return dist.get_backend()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    # DeepSpeed reads the local rank and size (LOCAL_SIZE on CPU) from the environment
    # and puts the model on GPU LOCAL_RANK; a dask-cuda worker sees its own GPU first.
    device_rank = rank_device().index if torch.cuda.is_available() else local_rank
    os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(device_rank),
                      LOCAL_WORLD_SIZE=str(local_world_size), LOCAL_SIZE=str(local_world_size))
    # A timeout turns a dead peer into an error instead of a hang.
    dist.init_process_group(backend, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return backend


def rank_device() -> torch.device:
    """This rank's device: the first visible GPU, else the CPU. dask-cuda starts each
    worker with CUDA_VISIBLE_DEVICES rotated so that its own GPU comes first."""
    if torch.cuda.is_available():
        torch.cuda.set_device(0)
        return torch.device("cuda", 0)
    return torch.device("cpu")


def collective_device() -> torch.device:
    """Where tensors for collectives must live: NCCL reduces GPU tensors only."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def cpu_cores_for(local_rank: int, threads: int, n_cpus: int | None = None) -> str:
    """Cores for one rank's OpenMP threads: local rank r gets [r*threads, (r+1)*threads),
    so ranks on one machine do not share cores. 'nobind' when they would not fit."""
    n_cpus = n_cpus or os.cpu_count() or 1
    first, last = local_rank * threads, (local_rank + 1) * threads - 1
    return f"{first}-{last}" if last < n_cpus else "nobind"


def all_gather(obj) -> list:
    """Every rank's small picklable object, in rank order (just [obj] on one rank)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def pooled_mean(parts: list[tuple[float, float]]) -> float:
    """The mean over every rank's items from (mean, count) per rank: each rank weighs by
    its count, so ranks with more tokens count more (0 when there are none)."""
    total = sum(count for _, count in parts)
    return sum(mean * count for mean, count in parts) / total if total else 0.0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over every rank (just `t` on one rank)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return t
    buf = t.to(collective_device())
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(t.device)
