"""cluster=address on a cluster started by hand, as on several machines: a `dask
scheduler` and `dask worker` processes from the command line, each worker in its own
working folder (a node's), outliving runs. `siirl train` trains there, recovers a
worker killed for real, resumes, and says which rank cannot see the run folder when a
worker's filesystem differs from the driver's (a tmpfs mounted over it in the worker's
own mount namespace, as on a node without the shared disk)."""
import json
import os
import signal
import subprocess
import sys
import re
from contextlib import contextmanager
from pathlib import Path

import pytest

from siirl_core.metrics import read_metrics
from tests.conftest import ROOT, _free_port
from tests.e2e.helpers import metrics_by_step, run_siirl, run_siirl_killing, summary
from tests.e2e.test_resume import assert_same_run

pytestmark = pytest.mark.slow
DASK = str(Path(sys.executable).with_name("dask"))
# docs/cluster.md: workers started without Dask's MALLOC_TRIM_THRESHOLD_ and one thread each.
WORKER_ENV = {"DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON": "{'MALLOC_TRIM_THRESHOLD_': None, 'OMP_NUM_THREADS': 1}"}


def _start(cmd: list[str], cwd: str, log_path: str) -> subprocess.Popen:
    with open(log_path, "w") as log:
        return subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(os.environ, **WORKER_ENV))


def _wait_for_workers(address: str, n: int, timeout: float = 120) -> None:
    from distributed import Client

    with Client(address, timeout=timeout) as client:
        client.wait_for_workers(n, timeout=timeout)


@contextmanager
def hand_started_cluster(root: Path, nodes: list[list[str]]):
    """A scheduler and one worker per entry of `nodes` (a command prefix, e.g. to run it in
    another mount namespace), each worker in folder root/node<i>. Yields the address and
    the node folders."""
    root.mkdir(parents=True, exist_ok=True)
    address = f"tcp://127.0.0.1:{_free_port()}"
    procs = [_start([DASK, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                     "--no-dashboard"], str(root), str(root / "scheduler.log"))]
    folders = []
    try:
        for i, prefix in enumerate(nodes):
            folder = root / f"node{i}"
            folder.mkdir()
            folders.append(folder)
            procs.append(_start([*prefix, DASK, "worker", address, "--nthreads", "1", "--nworkers", "1",
                                 "--no-dashboard"], str(folder), str(root / f"worker{i}.log")))
        _wait_for_workers(address, len(nodes))
        yield address, folders
    finally:
        for p in reversed(procs):
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def _args(address: str, run_uri: str, cache_dir: str, steps: int) -> list[str]:
    return ["train", "cluster=address", f"cluster.address={address}", "cluster.n_workers=2",
            f"storage.uri={run_uri}", f"storage.cache_dir={cache_dir}", "model=tiny", f"trainer.steps={steps}",
            "trainer.save_every=3", "trainer.eval_every=0", "trainer.prompts_per_step=16", "task.eval_size=100"]


def _rank_pids(run_dir: str) -> list[int]:
    with open(os.path.join(run_dir, "ranks.json")) as f:
        return [r["pid"] for r in json.load(f)]


def test_hand_started_cluster_trains_recovers_and_resumes(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    # Relative to where `siirl` runs (the repository), not to the workers' folders.
    run_uri = os.path.relpath(run_dir, ROOT)
    with hand_started_cluster(tmp_path / "cluster", [[], []]) as (address, node_folders):
        before_kill: dict = {}

        def rank1_after_snapshot(_proc) -> int:
            before_kill.update({r["step"]: r for r in read_metrics(str(run_dir)) if r["step"] > 0})
            return _rank_pids(str(run_dir))[1]

        proc, victim, _ = run_siirl_killing(_args(address, run_uri, cache_dir, steps=6), str(run_dir),
                                            after_step=4, choose=rank1_after_snapshot)
        out = proc.stdout
        assert proc.returncode == 0, out[-5000:]
        assert "rank 1 (Dask worker" in out and f"pid {victim})" in out, out[-5000:]
        assert "restored every rank from checkpoint step 3" in out
        first_pids = _rank_pids(str(run_dir))
        assert victim not in first_pids
        metrics = metrics_by_step(str(run_dir))
        assert sorted(metrics) == [1, 2, 3, 4, 5, 6]
        replayed = [s for s in before_kill if s > 3]
        assert replayed, sorted(before_kill)
        assert_same_run({s: before_kill[s] for s in replayed}, {s: metrics[s] for s in replayed})

        # The same workers, still holding the finished run's ranks: restarted, then resumed.
        resumed = run_siirl(_args(address, run_uri, cache_dir, steps=8))
        assert "hold ranks of an earlier run: restarting them" in resumed.stdout + resumed.stderr
        assert summary(str(run_dir))["resumed_from_step"] == 6
        assert sorted(metrics_by_step(str(run_dir))) == list(range(1, 9))
        assert not set(_rank_pids(str(run_dir))) & set(first_pids)
        # Every path reached the ranks absolute: nothing landed in the workers' own folders.
        assert [sorted(os.listdir(f)) for f in node_folders] == [[], []]


def _can_mount_privately() -> bool:
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs none /mnt"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_privately(), reason="needs root for a private mount namespace (CI runs as root)")
def test_a_worker_that_cannot_see_the_run_folder_is_named(tmp_path, cache_dir):
    shared = tmp_path / "shared"
    shared.mkdir()
    # Node 1 has its own (empty) disk where the others mount the shared folder.
    other_disk = ["unshare", "-m", "sh", "-c", f'mount -t tmpfs none {shared} && exec "$0" "$@"']
    with hand_started_cluster(tmp_path / "cluster", [[], other_disk]) as (address, _):
        proc = run_siirl(_args(address, str(shared / "run"), cache_dir, steps=2), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    named = re.search(r"rank \d \(Dask worker (tcp://127.0.0.1:\d+)\) cannot see the run folder "
                      + re.escape(f"{shared / 'run'} (storage.uri; or use storage.uri=s3://...)"), out)
    assert named, out[-4000:]
    # ... and it is the worker on the other disk.
    assert f"Start worker at:      {named.group(1)}" in (tmp_path / "cluster" / "worker1.log").read_text()
    assert not os.path.exists(shared / "run" / "metrics.jsonl")  # stopped before any step
