"""torch.distributed set-up for one rank (the rendezvous address comes from outside)."""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def init_process_group(rank: int, world_size: int, master_addr: str, master_port: int,
                       timeout_s: float = 300.0) -> str:
    if dist.is_initialized():
        return dist.get_backend()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    # A timeout turns a dead peer into an error instead of a hang.
    dist.init_process_group(backend, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return backend


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
