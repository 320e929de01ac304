"""`prefect deployment run` for real: a Prefect server on loopback (SQLite), a process
work pool, `prefect deploy` from prefect.yaml, a worker, and smoke-size runs of the
three deployments: siirl-train/default (checkpoints in storage), siirl-evaluate/default
on its exported policy (results file and artifact), and siirl-train/nightly-retrain
(a verdict recorded for the run's scheduled date)."""
import datetime
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from siirl_core import champion
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


def _evaluate_deployment(run, run_dir: str, overrides: list[str]) -> None:
    policy = os.path.join(run_dir, "final_policy")
    params = overrides + [f"evaluate.source={policy}", "evaluate.n=4", "evaluate.pass_k=[1,4]"]
    result = run("deployment", "run", "siirl-evaluate/default", "--param", f"overrides={json.dumps(params)}",
                 "--watch")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    saved = os.listdir(os.path.join(policy, "evaluations"))
    with open(os.path.join(policy, "evaluations", saved[0])) as f:
        assert set(json.load(f)["results"]) >= {"val/arithmetic/mean@4", "val/arithmetic/pass@4",
                                                "val/arithmetic/maj@4"}
    artifact = run("artifact", "inspect", "siirl-evaluation")
    assert "val/arithmetic/maj@4" in artifact.stdout, artifact.stdout[-2000:]


def _nightly_retrain_deployment(run, run_dir: str, overrides: list[str]) -> None:
    """A manual run of the cron deployment: continues the newest checkpoint (step 4) and
    records a verdict dated by the flow run's scheduled time (today, for a manual run)."""
    params = overrides + ["retrain.iterations=2"]
    result = run("deployment", "run", "siirl-train/nightly-retrain", "--param",
                 f"overrides={json.dumps(params)}", "--watch")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [verdict] = champion.read_history(run_dir)
    assert verdict["started_from"] == "newest" and verdict["candidate"]["step"] == 6
    assert verdict["date"] == datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    assert ckpt.verify(verdict["candidate"]["folder"]) is not None
    verdict_artifact = run("artifact", "inspect", "siirl-retrain-verdict")
    assert "candidate" in verdict_artifact.stdout and verdict["date"] in verdict_artifact.stdout, \
        verdict_artifact.stdout[-2000:]


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
                     "task.eval_size=50", "sft.steps=50", "model=tiny"]
        result = run("deployment", "run", "siirl-train/default", "--param", f"overrides={json.dumps(overrides)}",
                     "--watch")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "Completed" in result.stdout
        assert [s for s, _ in ckpt.complete_checkpoints(run_dir)] == [2, 4]

        nightly = run("deployment", "inspect", "siirl-train/nightly-retrain")
        assert "0 3 * * *" in nightly.stdout and "'retrain': True" in nightly.stdout, nightly.stdout
        _evaluate_deployment(run, run_dir, overrides)
        _nightly_retrain_deployment(run, run_dir, overrides)
    finally:
        for proc in (worker, server):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:  # a slow shutdown on a loaded machine is not this test's subject
                    proc.kill()
                    proc.wait(timeout=30)
        logs.close()
