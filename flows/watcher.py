"""Nothing a flow process starts may outlive it, and its flow runs may not stay Running.

A flow process killed without a chance to clean up (SIGKILL, the OOM killer) leaves
behind Prefect's temporary API server, Dask worker processes and anything else it
started, and its flow run stays Running in Prefect's database forever. At the start of
each flow, `watch_this_process` starts (once per process) a small watcher process of its
own session. The watcher keeps a list of the flow process's descendants; when the flow
process is gone it marks the flow runs it recorded Crashed (unless they reached a final
state) while the API server is still up, then stops the descendants still running
(SIGTERM, then SIGKILL after a grace period) and exits. After a clean exit it finds the
runs final and the descendants gone, and has nothing to do.

Run as `python -m flows.watcher PID STATE_FILE`; Linux and macOS (psutil).
"""
from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
import time

POLL_S = 0.5
GRACE_S = 5.0

_state_file: str | None = None


def watch_this_process(flow_run_id: str, api_url: str) -> None:
    """Record a flow run of this process for the watcher, starting the watcher first if
    this process has none."""
    global _state_file
    if _state_file is None:
        fd, path = tempfile.mkstemp(prefix=f"siirl-watch-{os.getpid()}-", suffix=".json")
        os.close(fd)
        _write(path, {"api_url": api_url, "flow_runs": [], "clean_exit": False})
        # Its own session: a Ctrl-C or a kill of the flow's process group leaves it running
        # to clean up after them.
        subprocess.Popen([sys.executable, "-m", "flows.watcher", str(os.getpid()), path],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
        _state_file = path
        atexit.register(_exit_cleanly)
    state = _read(_state_file)
    state["flow_runs"].append(flow_run_id)
    _write(_state_file, state)


def on_running(flow, flow_run, state) -> None:
    """Prefect's on_running hook for siirl's flows: this flow run is watched."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        api_url = str(client.api_url)
    watch_this_process(str(flow_run.id), api_url)


def _exit_cleanly() -> None:
    """At interpreter exit (not after SIGKILL): Prefect has finished this process's flow
    runs and stops its API server next, so the watcher must not ask it about them."""
    state = _read(_state_file)
    state["clean_exit"] = True
    _write(_state_file, state)


def _read(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _write(path: str, state: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)  # the watcher never reads half a file


def watch(pid: int, state_file: str) -> int:
    # Prefect reads its settings when first imported: the API must be named before.
    os.environ["PREFECT_API_URL"] = _read(state_file)["api_url"]
    import httpx
    import psutil
    from prefect.exceptions import PrefectException

    known: dict[int, psutil.Process] = {}
    try:
        parent = psutil.Process(pid)
        while _alive(parent):
            for child in parent.children(recursive=True):
                if child.pid != os.getpid():  # the watcher is one of them
                    known.setdefault(child.pid, child)
            time.sleep(POLL_S)
    except psutil.NoSuchProcess:
        pass
    state = _read(state_file) if os.path.exists(state_file) else {"flow_runs": []}
    try:
        crashed = mark_crashed(state, f"the flow's process (pid {pid}) ended without finishing the flow run "
                                      "(killed, or out of memory)")
    except (OSError, httpx.HTTPError, PrefectException) as err:  # the leftovers are stopped all the same
        print(f"siirl: could not mark the flow runs of process {pid} Crashed: {err}", file=sys.stderr, flush=True)
        crashed = []
    stopped = stop(list(known.values()))
    for path in (state_file, state_file + ".tmp"):
        if os.path.exists(path):
            os.remove(path)
    if crashed or stopped:
        print(f"siirl: process {pid} ended without cleaning up: marked flow run(s) {crashed or 'none'} Crashed; "
              f"stopped {len(stopped)} process(es) it left running: {', '.join(stopped) or 'none'}",
              file=sys.stderr, flush=True)
    return 0


def _alive(process) -> bool:
    """Running, and not a zombie: a process that has exited stays in the table until its
    parent reads its exit status, and a parent reading pipes to their end waits for the
    watcher, which holds its stderr."""
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def mark_crashed(state: dict, message: str) -> list[str]:
    """Set each recorded flow run that is not in a final state to Crashed; their ids."""
    if state.get("clean_exit"):
        return []
    return [run_id for run_id in state.get("flow_runs", []) if crash_if_unfinished(run_id, message)]


def crash_if_unfinished(run_id: str, message: str) -> bool:
    """Mark a flow run whose process is gone Crashed, unless Prefect already shows a
    final state; whether it did."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        if run.state is not None and run.state.is_final():
            return False
        client.set_flow_run_state(run_id, Crashed(message=message), force=True)
        return True


def stop(processes: list) -> list[str]:
    """SIGTERM the processes still running, SIGKILL those left after GRACE_S; names of
    those that had to be stopped. psutil.Process checks the start time, so a pid reused
    by an unrelated process is not touched."""
    import psutil

    alive = [p for p in processes if _alive(p)]
    if alive:
        _, slow = psutil.wait_procs(alive, timeout=GRACE_S)  # a clean exit may still be stopping them
        alive = [p for p in slow if _alive(p)]
    names = []
    for p in alive:
        try:
            names.append(f"{p.name()} ({p.pid})")
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, left = psutil.wait_procs(alive, timeout=GRACE_S)
    for p in left:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return names


if __name__ == "__main__":
    sys.exit(watch(int(sys.argv[1]), sys.argv[2]))
