"""The rank group names a dead worker's exit reason, as its nanny reported it."""
import os
import signal
import time

from distributed import Client, LocalCluster

from infra.rank_group import RankGroup


def test_dead_worker_is_named_with_its_exit_signal():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        (addr, pid), = client.run(os.getpid).items()
        group = RankGroup(client, {}, "", 1, workers=[addr], info=[{"pid": pid}])
        os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 30
        while addr in group._alive() and time.time() < deadline:
            time.sleep(0.1)
        message = group._death(0, "evaluate")
    assert message == (f"rank 0 (Dask worker {addr}, pid {pid}) died during evaluate "
                       f"(Worker process {pid} was killed by signal 9)")
