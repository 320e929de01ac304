"""Run `siirl` as a user would (a subprocess) and read what it left in the run folder."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from typing import Callable

from siirl_core.metrics import read_metrics
from tests.conftest import ROOT, siirl_cli


# The test session's Prefect server ({"api": URL}), started by tests/e2e/conftest.py.
SHARED_SERVER: dict[str, str] = {}


def siirl_env(temporary_server: bool = False) -> dict:
    """The environment `siirl` (and a process reading Prefect's database) runs in: with the
    session's Prefect server as PREFECT_API_URL, or with temporary_server=True without, so
    that `siirl` starts Prefect's temporary server itself, as with the README's command."""
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    if "api" in SHARED_SERVER and not temporary_server:
        env["PREFECT_API_URL"] = SHARED_SERVER["api"]
    return env


def run_siirl(args: list[str], timeout: int = 900, check: bool = True,
              temporary_server: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run(siirl_cli() + args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=siirl_env(temporary_server))
    if check and proc.returncode != 0:
        raise AssertionError(f"siirl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return proc


def summary(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "summary.json")) as f:
        return json.load(f)


def metrics_by_step(run_dir: str, initial: bool = False) -> dict[int, dict]:
    """The training steps' rows of the metrics log by step; with initial=True also step
    0, the evaluation before training."""
    rows = read_metrics(run_dir)
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"duplicate steps in the metrics log: {steps}"
    return {r["step"]: r for r in rows if initial or r["step"] > 0}


def run_siirl_killing_a_rank(args: list[str], run_dir: str, after_step: int, rank: int = 0,
                             timeout: int = 900) -> tuple[subprocess.CompletedProcess, int]:
    """Run `siirl` as a user would and, once `after_step` steps are in the run folder's
    metrics log, SIGKILL one rank's worker process (ranks.json names it), as a crash or
    the kernel's OOM killer would. Returns the finished process (stdout and stderr
    together in .stdout) and the killed pid."""
    def rank_pid(_proc) -> int:
        with open(os.path.join(run_dir, "ranks.json")) as f:
            return json.load(f)[rank]["pid"]

    proc, victim, _ = run_siirl_killing(args, run_dir, after_step, rank_pid, timeout)
    return proc, victim


def run_siirl_killing(args: list[str], run_dir: str, after_step: int, choose: Callable[[subprocess.Popen], int],
                      timeout: int = 900,
                      temporary_server: bool = False) -> tuple[subprocess.CompletedProcess, int, list]:
    """Run `siirl` and SIGKILL the process `choose(proc)` names once `after_step` steps are
    in the metrics log, then wait up to 60 s for every process `siirl` had started to end.
    Returns the finished process (stdout and stderr together in .stdout), the killed pid,
    and those of its descendants at the time of the kill still running after the wait
    (psutil.Process objects)."""
    import psutil

    env = siirl_env(temporary_server)
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: nobody reads a pipe while we wait
        proc = subprocess.Popen(siirl_cli() + args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + timeout
            while not (os.path.exists(metrics_path) and steps_logged(metrics_path) >= after_step):
                if proc.poll() is not None:  # seek only then: `siirl` writes at the offset this file shares
                    log.seek(0)
                    raise AssertionError(f"the run ended before step {after_step}:\n{log.read()[-5000:]}")
                assert time.time() < deadline, f"step {after_step} not reached in {timeout} s"
                time.sleep(0.02)
            victim = choose(proc)
            descendants = psutil.Process(proc.pid).children(recursive=True)
            os.kill(victim, signal.SIGKILL)
            proc.wait(timeout=timeout)
            # What `siirl` started ends with it (its last words go to the same log).
            _, left = psutil.wait_procs(descendants, timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        log.seek(0)
        out = log.read()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, ""), victim, left


def wait_healthy(api: str, server: subprocess.Popen | None = None, timeout: float = 120) -> None:
    """Wait for a Prefect server's /health to answer (and fail at once if its process ended)."""
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if server is not None and server.poll() is not None:
            raise RuntimeError(f"the prefect server ended with {server.returncode}")
        try:
            urllib.request.urlopen(api + "/health", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("prefect server did not become healthy")


def steps_logged(path: str) -> int:
    """Training steps in a metrics log (step 0, the evaluation before training, is not one);
    a line still being written is not counted yet."""
    count = 0
    with open(path) as f:
        for line in f:
            try:
                count += json.loads(line)["step"] > 0
            except ValueError:
                pass
    return count
