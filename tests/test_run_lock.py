"""One live run per run folder: a second `siirl train` on a folder a live run holds is
refused before anything starts; a lock left by a dead process is taken over, and the dead
run's flow run, if Prefect still shows it Running, is marked Crashed."""
import json
import os
import socket
import subprocess
import sys

import psutil
import pytest

from flows import run_lock
from tests.conftest import ROOT, siirl_cli


def write_lock(run_dir, pid: int, host: str | None = None) -> None:
    started = psutil.Process(pid).create_time() if psutil.pid_exists(pid) else 0.0
    with open(os.path.join(run_dir, run_lock.LOCK_NAME), "w") as f:
        json.dump({"pid": pid, "pid_started": started, "host": host or socket.gethostname(),
                   "flow_run_id": "0b7c0000-0000-0000-0000-000000000000", "flow_run_name": "busy-bee",
                   "started": "2026-11-30T23:00:00"}, f)


@pytest.fixture
def live_process():
    proc = subprocess.Popen(["sleep", "120"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_second_run_on_a_held_folder_is_refused_before_it_starts(tmp_path, live_process):
    write_lock(tmp_path, live_process.pid)
    proc = subprocess.run(siirl_cli() + ["train", f"storage.uri={tmp_path}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert (f"siirl: storage.uri='{tmp_path}' is in use by another siirl run (pid {live_process.pid}, flow run "
            f"busy-bee") in proc.stderr, proc.stderr
    assert "Starting temporary server" not in proc.stdout + proc.stderr  # refused before Prefect started
    assert sorted(os.listdir(tmp_path)) == [run_lock.LOCK_NAME]  # nothing of the live run touched


def test_a_lock_from_another_host_counts_as_live(tmp_path):
    write_lock(tmp_path, os.getpid(), host="node-7")
    with pytest.raises(run_lock.RunFolderBusy, match="on host node-7"):
        run_lock.refuse_if_busy(str(tmp_path), str(tmp_path))


def test_a_dead_process_lock_is_taken_over_and_released(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    write_lock(tmp_path, gone.pid)
    stale = run_lock.acquire(str(tmp_path), str(tmp_path), "id-1", "new-run", "2026-11-30T23:30:00")
    assert stale["pid"] == gone.pid and stale["flow_run_name"] == "busy-bee"
    held = run_lock.holder(str(tmp_path))
    assert held["pid"] == os.getpid() and held["flow_run_name"] == "new-run"
    assert held["pid_started"] == pytest.approx(psutil.Process().create_time())
    run_lock.release(str(tmp_path))
    assert run_lock.holder(str(tmp_path)) is None


def test_the_dead_runs_flow_run_is_marked_crashed_once():
    # A real flow run (Prefect's temporary server), left Running as a killed process leaves it.
    code = ("from prefect import flow\nfrom prefect.runtime import flow_run\n"
            "from prefect.client.orchestration import get_client\nfrom prefect.states import Running\n"
            "from flows import run_lock\n"
            "@flow\ndef held():\n    return str(flow_run.id)\n"
            "run_id = held()\n"
            "with get_client(sync_client=True) as c:\n"
            "    c.set_flow_run_state(run_id, Running(), force=True)\n"
            "    stale = {'flow_run_id': run_id, 'pid': 4242, 'host': 'here'}\n"
            "    first, second = run_lock.crash_stale_flow_run(stale), run_lock.crash_stale_flow_run(stale)\n"
            "    state = c.read_flow_run(run_id).state\n"
            "print('RESULT', first, second, state.type.value, state.message)\n")
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert result, proc.stdout + proc.stderr
    assert result[0] == ("RESULT True False CRASHED its process (pid 4242 on here) was gone when a new run started "
                         "in the same folder")


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_an_unreadable_lock_is_a_named_error_not_a_free_folder(tmp_path, content):
    (tmp_path / run_lock.LOCK_NAME).write_text(content)
    proc = subprocess.run(siirl_cli() + ["train", f"storage.uri={tmp_path}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"siirl: {tmp_path / run_lock.LOCK_NAME}" in proc.stderr and "delete the file" in proc.stderr
    assert (tmp_path / run_lock.LOCK_NAME).read_text() == content  # left as it was
