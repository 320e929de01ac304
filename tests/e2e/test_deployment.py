"""`prefect deployment run siirl-train/default` for real: a Prefect server on
loopback (SQLite), a process work pool, `prefect deploy` from prefect.yaml, a worker,
and a smoke-size run that completes with its checkpoints in storage."""
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from siirl_core import checkpoint as ckpt
from tests.conftest import ROOT, _free_port

pytestmark = pytest.mark.slow
PREFECT = str(Path(sys.executable).with_name("prefect"))


def _wait_healthy(api: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(api + "/health", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("prefect server did not become healthy")


def test_deployment_run_completes(tmp_path, cache_dir):
    api = f"http://127.0.0.1:{_free_port()}/api"
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_API_URL=api,
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    port = api.split(":")[2].split("/")[0]
    logs = open(tmp_path / "services.log", "w")
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", port], env=env,
                              stdout=logs, stderr=subprocess.STDOUT)
    worker = None
    try:
        _wait_healthy(api)
        run = lambda *args: subprocess.run([PREFECT, *args], env=env, cwd=ROOT, capture_output=True,  # noqa: E731
                                           text=True, timeout=900)
        assert run("work-pool", "create", "siirl-process", "--type", "process").returncode == 0
        deployed = run("--no-prompt", "deploy", "--all")
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "siirl-process"], env=env, cwd=ROOT,
                                  stdout=logs, stderr=subprocess.STDOUT)
        run_dir = str(tmp_path / "run")
        overrides = [f"storage.uri={run_dir}", f"storage.cache_dir={cache_dir}", "trainer.steps=4",
                     "trainer.save_every=2", "trainer.eval_every=0", "trainer.prompts_per_step=8",
                     "task.eval_size=50", "sft.steps=50"]
        result = run("deployment", "run", "siirl-train/default", "--param", f"overrides={json.dumps(overrides)}",
                     "--watch")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "Completed" in result.stdout
        assert [s for s, _ in ckpt.complete_checkpoints(run_dir)] == [2, 4]
    finally:
        for proc in (worker, server):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
        logs.close()
