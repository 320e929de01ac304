"""One live run per run folder: two runs writing the same checkpoints and metrics would
destroy each other's work. A run holds `run.lock.json` in its run folder (its pid and
that process's start time, host, flow run) from start to end. A lock whose process is
gone (killed together with its watcher, a reboot) is stale: the next run takes it over
and marks the dead run's flow run Crashed if Prefect still shows it Running.
"""
from __future__ import annotations

import json
import os
import socket

LOCK_NAME = "run.lock.json"


class RunFolderBusy(RuntimeError):
    """Another live siirl process holds the run folder."""


def holder(run_dir: str) -> dict | None:
    """The lock's contents, or None when there is no lock. A lock that cannot be read is
    not taken for a free folder: RunFolderBusy says which file and what to do."""
    path = os.path.join(run_dir, LOCK_NAME)
    try:
        with open(path) as f:
            lock = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise RunFolderBusy(f"{path} cannot be read ({err}): a run may hold this folder; if none is going, "
                            "delete the file") from None
    if not isinstance(lock, dict) or not {"pid", "pid_started", "host"} <= set(lock):
        raise RunFolderBusy(f"{path} is not a siirl run lock (expected pid, pid_started and host); if no run is "
                            "going, delete the file")
    return lock


def is_live(lock: dict) -> bool:
    """True when the locking process still runs; a lock from another host counts as live
    (its process cannot be checked from here)."""
    import psutil

    if lock.get("host") != socket.gethostname():
        return True
    try:
        proc = psutil.Process(lock["pid"])
        return abs(proc.create_time() - lock["pid_started"]) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def refuse_if_busy(run_dir: str, uri: str) -> dict | None:
    """Stop before any work when a live run holds the folder; else the stale lock, if any."""
    lock = holder(run_dir)
    if lock and is_live(lock):
        where = "" if lock.get("host") == socket.gethostname() else f" on host {lock.get('host')}"
        raise RunFolderBusy(
            f"storage.uri={uri!r} is in use by another siirl run (pid {lock['pid']}{where}, flow run "
            f"{lock.get('flow_run_name') or lock.get('flow_run_id')}, started {lock.get('started')}); "
            f"wait for it to end or stop it, or use another storage.uri. If that run is gone, delete "
            f"{os.path.join(run_dir, LOCK_NAME)}")
    return lock


def acquire(run_dir: str, uri: str, flow_run_id: str, flow_run_name: str, started: str) -> dict | None:
    """Take the folder's lock for this process; returns the stale lock it replaced, if any."""
    import psutil

    stale = refuse_if_busy(run_dir, uri)
    path = os.path.join(run_dir, LOCK_NAME)
    if stale:
        os.remove(path)
    me = {"pid": os.getpid(), "pid_started": psutil.Process().create_time(), "host": socket.gethostname(),
          "flow_run_id": flow_run_id, "flow_run_name": flow_run_name, "started": started}
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:  # another run took it between our check and now
        refuse_if_busy(run_dir, uri)
        raise
    with os.fdopen(fd, "w") as f:
        json.dump(me, f)
    return stale


def release(run_dir: str) -> None:
    """Remove the lock if this process holds it."""
    lock = holder(run_dir)
    if lock and lock.get("pid") == os.getpid() and lock.get("host") == socket.gethostname():
        os.remove(os.path.join(run_dir, LOCK_NAME))


def crash_stale_flow_run(stale: dict) -> bool:
    """Mark the dead run's flow run Crashed if Prefect still shows it unfinished."""
    from prefect.exceptions import ObjectNotFound

    from flows.watcher import crash_if_unfinished

    try:
        return crash_if_unfinished(stale["flow_run_id"], f"its process (pid {stale['pid']} on {stale['host']}) "
                                                         "was gone when a new run started in the same folder")
    except ObjectNotFound:  # recorded in another Prefect database: nothing to mark in this one
        return False
