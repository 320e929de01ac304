"""Rank workers on Dask: one long-lived RankWorker actor per Dask worker, with a
torch.distributed rendezvous at rank 0's host and a free port found there.

Only configs, step numbers and small dicts cross this boundary; `traffic` records
the pickled size of every call's arguments and results so that stays checkable."""
from __future__ import annotations

import logging
import pickle
import re
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

from distributed import Client

from infra.worker_prep import absolute_paths, check_visible, restart_used_workers

log = logging.getLogger("siirl.rank_group")


class RankFailure(RuntimeError):
    """A rank raised or its worker process died; the message says which. `cause` is the
    type of the exception the rank raised (None when a process died), so callers decide
    by type, not by reading the message."""

    def __init__(self, message: str, cause: type | None = None):
        super().__init__(message)
        self.cause = cause

    def __reduce__(self):  # Prefect keeps task failures; pickling must keep `cause`
        return type(self), (str(self), self.cause)

    def caused_by(self, kind) -> bool:
        """True when the rank raised an exception of `kind` (a type or a tuple of types)."""
        return self.cause is not None and issubclass(self.cause, kind)


class _DeathReasons(logging.Handler):
    """Why worker processes ended, by pid, from the nannies' own log lines ("Worker
    process 123 was killed by signal 9", "... exceeded 95% memory budget"). Only
    nannies in this process (LocalCluster, LocalCUDACluster) log here."""

    PID = re.compile(r"(?:Worker process |pid=)(\d+)")

    def __init__(self):
        super().__init__(logging.INFO)
        self.by_pid: dict[int, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        match = self.PID.search(msg)
        if match and ("killed" in msg or "exited" in msg or "memory" in msg):
            self.by_pid.setdefault(int(match.group(1)), msg.splitlines()[0][:200])


DEATH_REASONS = _DeathReasons()
logging.getLogger("distributed.nanny").addHandler(DEATH_REASONS)  # and distributed.nanny.memory


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _host_of(address: str) -> str:
    # "tcp://10.0.0.5:40123" -> "10.0.0.5": rank 0's Dask address is reachable by its peers.
    return address.split("://")[-1].rsplit(":", 1)[0]


def local_ranks(workers: list[str]) -> list[tuple[int, int]]:
    """(local rank, ranks on that host) for each worker address, in order."""
    hosts = [_host_of(w) for w in workers]
    per_host = Counter(hosts)
    seen: Counter = Counter()
    out = []
    for h in hosts:
        out.append((seen[h], per_host[h]))
        seen[h] += 1
    return out


@dataclass
class RankGroup:
    """Handles to the RankWorker actors, in rank order. Calls fan out to all ranks
    and wait for all (collectives need every rank), failing fast when one fails."""

    client: Client
    cfg: dict
    model_path: str | dict  # the single-agent policy's directory, or policy id -> directory
    world_size: int
    actors: list = field(default_factory=list)
    workers: list[str] = field(default_factory=list)
    info: list[dict] = field(default_factory=list)
    traffic: list[tuple[str, int, int]] = field(default_factory=list)
    poll_s: float = 0.02

    def _pick_workers(self) -> list[str]:
        self.client.wait_for_workers(self.world_size, timeout=300)
        return sorted(self._alive())[:self.world_size]

    def start(self) -> "RankGroup":
        workers = self._pick_workers()
        if restart_used_workers(self.client, workers):
            workers = self._pick_workers()
        storage = self.cfg["storage"]["uri"]
        model_dirs = list(self.model_path.values()) if isinstance(self.model_path, dict) else [self.model_path]
        check_visible(self.client, workers, model_dirs, storage if "://" not in storage else None)
        host = _host_of(workers[0])
        port = self.client.run(_free_port, workers=[workers[0]])[workers[0]]
        from siirl_core.worker import RankWorker  # here: it pulls in the training engines

        futures = [self.client.submit(RankWorker, self.cfg, self.model_path, rank, self.world_size, host, port,
                                      local, n_local, actor=True, workers=[addr], pure=False)
                   for rank, (addr, (local, n_local)) in enumerate(zip(workers, local_ranks(workers)))]
        self.actors = [f.result() for f in futures]
        self.workers = workers
        self.info = self.call("setup")
        for i in self.info:  # a recycled pid must not inherit an old process's exit reason
            DEATH_REASONS.by_pid.pop(i["pid"], None)
        return self

    def _alive(self) -> set[str]:
        # Asked of the scheduler each time: Client.scheduler_info() returns a cache that the
        # client's periodic refresh can overwrite, between the fetch and the return, with one
        # that lists no workers, and a live rank then looked dead ("died during setup").
        return set(self.client.sync(self.client.scheduler.identity, n_workers=-1)["workers"])

    def _describe(self, rank: int) -> str:
        pid = self.info[rank]["pid"] if rank < len(self.info) else "?"
        return f"rank {rank} (Dask worker {self.workers[rank]}, pid {pid})"

    def _death(self, rank: int, method: str) -> str:
        """'rank r (...) died during m', with the nanny's reason once it has logged one."""
        pid = self.info[rank]["pid"] if rank < len(self.info) else None
        deadline = time.monotonic() + 2.0
        while pid not in DEATH_REASONS.by_pid and time.monotonic() < deadline:
            time.sleep(0.1)  # the nanny logs the exit code right after the scheduler notices
        reason = DEATH_REASONS.by_pid.get(pid)
        return f"{self._describe(rank)} died during {method}" + (f" ({reason})" if reason else "")

    def call(self, method: str, *args, **kwargs) -> list:
        arg_bytes = len(pickle.dumps((args, kwargs)))
        futures = []
        for rank, actor in enumerate(self.actors):
            try:
                futures.append(getattr(actor, method)(*args, **kwargs))
            except Exception as err:  # "Worker holding Actor was lost": its process died since the last call
                raise self._failure(rank, method, err) from err
        results: list = [None] * len(futures)
        pending = set(range(len(futures)))
        last_check = time.monotonic()
        while pending:
            for rank in sorted(pending):
                if futures[rank].done():
                    try:
                        results[rank] = futures[rank].result()
                    except Exception as err:
                        raise self._failure(rank, method, err) from err
                    pending.discard(rank)
            if pending and time.monotonic() - last_check > 1.0:
                # A killed process never answers: notice it from the scheduler.
                alive = self._alive()
                dead = [r for r in sorted(pending) if self.workers[r] not in alive]
                if dead:
                    raise RankFailure(self._death(dead[0], method))
                last_check = time.monotonic()
            if pending:
                time.sleep(self.poll_s)
        self.traffic.append((method, arg_bytes, max(len(pickle.dumps(r)) for r in results)))
        return results

    def _dead_ranks(self, grace_s: float = 3.0) -> list[int]:
        """Ranks whose worker left the scheduler, waiting briefly for it to notice."""
        deadline = time.monotonic() + grace_s
        while True:
            alive = self._alive()
            dead = [r for r, w in enumerate(self.workers) if w not in alive]
            if dead or time.monotonic() > deadline:
                return dead
            time.sleep(0.2)

    def _failure(self, rank: int, method: str, err: Exception) -> RankFailure:
        """Name the root cause: a peer's death makes the survivors' collectives fail too."""
        first = str(err).splitlines()[0][:300] if str(err) else ""
        dead = self._dead_ranks()
        if dead:
            return RankFailure(f"{self._death(dead[0], method)}; then "
                               f"{self._describe(rank)} failed: {type(err).__name__}: {first}")
        return RankFailure(f"{self._describe(rank)} failed in {method}: {type(err).__name__}: {first}", type(err))

    def call_rank0(self, method: str, *args, **kwargs):
        return self.call(method, *args, **kwargs)[0]

    def rebuild(self) -> "RankGroup":
        """Restart every Dask worker process (replacing lost ones, and freeing ranks
        stuck in a collective with a dead peer), then start a fresh rank group."""
        log.warning("rebuilding the rank group: restarting %d Dask workers", len(self.workers))
        self.actors = []
        self.client.restart(wait_for_workers=False)
        return self.start()


def start_rank_group(client: Client, cfg: dict, model_path: str | dict, world_size: int, run_dir: str) -> RankGroup:
    """Ranks on `world_size` workers, given every local path absolute (`run_dir` is the
    driver's run folder), on fresh processes that see the model and run folders."""
    cfg, model_path = absolute_paths(cfg, run_dir, model_path)
    return RankGroup(client, cfg, model_path, world_size).start()
