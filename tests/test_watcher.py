"""The watcher that outlives a flow process: once that process is gone (SIGKILL from
outside), the processes it started are stopped; after a clean exit, nothing is touched
and Prefect's API is not asked. The e2e test in tests/e2e/test_resume.py kills a real
`siirl train` and checks Prefect's flow run state as well."""
import json
import os
import signal
import subprocess
import sys
import time

import psutil

from tests.conftest import ROOT

# A parent that starts a long `sleep` child, reports its pid and waits.
PARENT = ("import subprocess, sys, time\n"
          "child = subprocess.Popen(['sleep', '600'])\n"
          "print(child.pid, flush=True)\n"
          "if sys.argv[1] == 'exit':\n"
          "    child.kill(); child.wait(); sys.exit(0)\n"
          "time.sleep(600)\n")


def start(tmp_path, mode: str, clean_exit: bool):
    state = tmp_path / "state.json"
    # No API is listening there: the watcher must not need one for these cases.
    state.write_text(json.dumps({"api_url": "http://127.0.0.1:9/api", "flow_runs": [], "clean_exit": clean_exit}))
    parent = subprocess.Popen([sys.executable, "-c", PARENT, mode], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    watcher = subprocess.Popen([sys.executable, "-m", "flows.watcher", str(parent.pid), str(state)], cwd=ROOT,
                               stderr=subprocess.PIPE, text=True)
    return state, parent, child, watcher


def test_a_killed_process_leaves_nothing_running(tmp_path):
    state, parent, child, watcher = start(tmp_path, "wait", clean_exit=False)
    time.sleep(1.5)  # the watcher has listed the parent's children
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    _, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 0, err
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    assert f"siirl: process {parent.pid} ended without cleaning up" in err and f"sleep ({child})" in err, err
    assert not state.exists()


def test_a_clean_exit_is_left_alone(tmp_path):
    state, parent, child, watcher = start(tmp_path, "exit", clean_exit=True)
    parent.wait()
    _, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 0 and err == "", err
    assert not state.exists()
