"""Rank workers on Dask: one long-lived RankWorker actor per Dask worker, with a
torch.distributed rendezvous at rank 0's host and a free port found there.
Only configs, step numbers and metric dicts cross this boundary."""
from __future__ import annotations

import socket
from dataclasses import dataclass

from distributed import Client


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _host_of(address: str) -> str:
    # "tcp://10.0.0.5:40123" -> "10.0.0.5": rank 0's Dask address is reachable by its peers.
    return address.split("://")[-1].rsplit(":", 1)[0]


@dataclass
class RankGroup:
    """Handles to the RankWorker actors, rank order. Calls fan out to all ranks and
    wait for all: collective operations need every rank."""

    client: Client
    actors: list
    workers: list[str]

    def call(self, method: str, *args, **kwargs) -> list:
        futures = [getattr(a, method)(*args, **kwargs) for a in self.actors]
        return [f.result() for f in futures]

    def call_rank0(self, method: str, *args, **kwargs):
        return self.call(method, *args, **kwargs)[0]


def start_rank_group(client: Client, cfg: dict, model_path: str, world_size: int) -> RankGroup:
    from siirl_core.worker import RankWorker

    workers = sorted(client.scheduler_info()["workers"])[:world_size]
    if len(workers) < world_size:
        raise RuntimeError(f"need {world_size} Dask workers, the cluster has {len(workers)}")
    host = _host_of(workers[0])
    port = client.run(_free_port, workers=[workers[0]])[workers[0]]
    futures = [client.submit(RankWorker, cfg, model_path, rank, world_size, host, port,
                             actor=True, workers=[addr], pure=False)
               for rank, addr in enumerate(workers)]
    actors = [f.result() for f in futures]
    group = RankGroup(client, actors, workers)
    group.call("setup")
    return group
