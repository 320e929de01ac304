"""`prefect deployment run` for real: a Prefect server on loopback (SQLite), a process
work pool, `prefect deploy` from prefect.yaml, a worker, and smoke-size runs of the
three deployments: siirl-train/default (its flow process killed mid-run: the
deployment's trigger reruns it and the rerun resumes to the end), siirl-evaluate/default
on its exported policy (results file and artifact), and siirl-train/nightly-retrain
(a verdict recorded for the run's scheduled date)."""
import datetime
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from siirl_core import champion
from siirl_core import checkpoint as ckpt
from tests.conftest import ROOT, _free_port
from tests.e2e.helpers import metrics_by_step, steps_logged, wait_healthy

pytestmark = pytest.mark.slow
PREFECT = str(Path(sys.executable).with_name("prefect"))


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
    table = run("artifact", "inspect", "siirl-evaluation-table")
    assert "'type': 'table'" in table.stdout and "val/arithmetic/pass@4" in table.stdout, table.stdout[-2000:]


def _nightly_retrain_deployment(run, run_dir: str, overrides: list[str]) -> None:
    """A manual run of the cron deployment: continues the newest checkpoint (step 6) and
    records a verdict dated by the flow run's scheduled time (today, for a manual run)."""
    params = overrides + ["retrain.iterations=2"]
    result = run("deployment", "run", "siirl-train/nightly-retrain", "--param",
                 f"overrides={json.dumps(params)}", "--watch")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [verdict] = champion.read_history(run_dir)
    assert verdict["started_from"] == "newest" and verdict["candidate"]["step"] == 8
    assert verdict["date"] == datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    assert ckpt.verify(verdict["candidate"]["folder"]) is not None
    verdict_artifact = run("artifact", "inspect", "siirl-retrain-verdict")
    assert "candidate" in verdict_artifact.stdout and verdict["date"] in verdict_artifact.stdout, \
        verdict_artifact.stdout[-2000:]
    history = run("artifact", "inspect", "siirl-champion-history")
    assert "'type': 'table'" in history.stdout and verdict["candidate"]["folder"] in history.stdout, \
        history.stdout[-2000:]


def _flow_runs(api: str) -> list[dict]:
    """Every flow run the server holds, as the Prefect UI reads them."""
    request = urllib.request.Request(api + "/flow_runs/filter", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def _killed_run_is_rerun_and_resumes(run, api: str, run_dir: str, overrides: list[str]) -> None:
    """SIGKILL of the flow run's process after step 3 (as the OOM killer would): the
    worker marks it Crashed, the deployment's trigger starts the same run again with
    crash_reruns=1, and the rerun resumes from the newest checkpoint to the end."""
    started = run("deployment", "run", "siirl-train/default", "--param", f"overrides={json.dumps(overrides)}")
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
    metrics = os.path.join(run_dir, "metrics.jsonl")
    deadline = time.time() + 600
    while not (os.path.exists(metrics) and steps_logged(metrics) >= 3):
        assert time.time() < deadline, "the deployment run did not reach step 3"
        time.sleep(0.05)
    with open(os.path.join(run_dir, "run.lock.json")) as f:
        os.kill(json.load(f)["pid"], signal.SIGKILL)
    deadline = time.time() + 600
    while True:
        runs = {r["parameters"].get("crash_reruns"): r for r in _flow_runs(api)
                if r["parameters"].get("overrides") == overrides}
        if 1 in runs and runs[1]["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        assert time.time() < deadline, {k: r["state_type"] for k, r in runs.items()}
        time.sleep(1)
    assert runs[0]["state_type"] == "CRASHED" and runs[1]["state_type"] == "COMPLETED", \
        {k: (r["state_type"], r["state_name"]) for k, r in runs.items()}
    assert runs[1]["parameters"]["max_crash_reruns"] == 3
    with open(os.path.join(run_dir, "summary.json")) as f:
        assert json.load(f)["resumed_from_step"] in (2, 4)
    assert sorted(metrics_by_step(run_dir)) == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in ckpt.complete_checkpoints(run_dir)] == [2, 4, 6]


def test_deployment_run_completes(tmp_path, cache_dir):
    api = f"http://127.0.0.1:{_free_port()}/api"
    # COLUMNS: the CLI's rich output would wrap long values (paths) at 80 characters.
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_API_URL=api,
               PREFECT_SERVER_ANALYTICS_ENABLED="false", COLUMNS="1000")
    port = api.split(":")[2].split("/")[0]
    logs = open(tmp_path / "services.log", "w")
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", port], env=env,
                              stdout=logs, stderr=subprocess.STDOUT)
    worker = None
    try:
        wait_healthy(api)
        run = lambda *args: subprocess.run([PREFECT, *args], env=env, cwd=ROOT, capture_output=True,  # noqa: E731
                                           text=True, timeout=900)
        assert run("work-pool", "create", "siirl-process", "--type", "process").returncode == 0
        deployed = run("--no-prompt", "deploy", "--all")
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "siirl-process"], cwd=ROOT,
                                  env=dict(env, PREFECT_WORKER_QUERY_SECONDS="2"),
                                  stdout=logs, stderr=subprocess.STDOUT)
        run_dir = str(tmp_path / "run")
        overrides = [f"storage.uri={run_dir}", f"storage.cache_dir={cache_dir}", "trainer.steps=6",
                     "trainer.save_every=2", "trainer.eval_every=0", "trainer.prompts_per_step=8",
                     "task.eval_size=50", "sft.steps=50", "model=tiny"]
        _killed_run_is_rerun_and_resumes(run, api, run_dir, overrides)

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
