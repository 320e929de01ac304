"""Run `siirl` as a user would (a subprocess) and read what it left in the run folder."""
from __future__ import annotations

import json
import os
import subprocess

from siirl_core.metrics import read_metrics
from tests.conftest import ROOT, siirl_cli


def run_siirl(args: list[str], timeout: int = 900, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    proc = subprocess.run(siirl_cli() + args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"siirl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return proc


def summary(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "summary.json")) as f:
        return json.load(f)


def metrics_by_step(run_dir: str) -> dict[int, dict]:
    rows = read_metrics(run_dir)
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"duplicate steps in the metrics log: {steps}"
    return {r["step"]: r for r in rows}
