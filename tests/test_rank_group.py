"""The rank group names a dead worker's exit reason, as its nanny reported it, and keeps the type
of what a rank raised."""
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


def _score_fails():
    from siirl_core.rewards import RewardError

    raise RewardError("reward function mine failed on sample s-1: ValueError: cannot parse")


def test_a_ranks_exception_type_survives_dask_and_decides_retries():
    """What a rank raised reaches the driver as its type, and recovery decides by type:
    a user's reward failure is not retried; a dead rank is."""
    import pickle

    import pytest
    from prefect.states import Failed

    from infra.rank_group import RankFailure
    from siirl_core import checkpoint as ckpt
    from siirl_core.rewards import RewardError
    from tasks.training import worth_retrying

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        with pytest.raises(RewardError) as caught:
            client.submit(_score_fails, pure=False).result()
        (addr, pid), = client.run(os.getpid).items()
        group = RankGroup(client, {}, "", 1, workers=[addr], info=[{"pid": pid}])
        failure = group._failure(0, "run_until", caught.value)
    assert str(failure).startswith(f"rank 0 (Dask worker {addr}, pid {pid}) failed in run_until: RewardError: "
                                   "reward function mine failed on sample s-1")
    assert failure.caused_by(RewardError) and not failure.caused_by(ckpt.ChecksumError)
    kept = pickle.loads(pickle.dumps(failure))
    assert kept.cause is RewardError and str(kept) == str(failure)
    assert not worth_retrying(None, None, Failed(data=failure))
    assert worth_retrying(None, None, Failed(data=RankFailure(f"rank 0 (pid {pid}) died during run_until")))
