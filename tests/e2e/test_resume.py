"""A run whose rank is killed (SIGKILL from outside) resumes with resume=auto, ends at
the configured step, and matches the uninterrupted run in every metric at every step and
in its final weights; with retries, the failed iteration is retried from the newest
checkpoint with a consistent log."""
import glob
import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from siirl_core import checkpoint as ckpt
from tests.e2e.helpers import (metrics_by_step, run_siirl, run_siirl_killing, run_siirl_killing_a_rank, siirl_env,
                               summary)

pytestmark = pytest.mark.slow
# Same seeds, same restored weights and optimizer state: the replay is bit-for-bit
# on one machine; the tolerance only absorbs float reduction-order noise.
TOL = 1e-5
# Not learning tests: the `tiny` model (0.43M parameters) keeps them short.
SHORT = ["model=tiny", "trainer.steps=6", "trainer.save_every=2", "trainer.eval_every=0",
         "trainer.prompts_per_step=16", "task.eval_size=100"]


@pytest.fixture(scope="session")
def uninterrupted_dir(tmp_path_factory, cache_dir) -> str:
    """The reference run; it is also tracked in MLflow (a SQLite store beside it) and in
    W&B offline, which changes none of its metrics."""
    run_dir = str(tmp_path_factory.mktemp("uninterrupted"))
    run_siirl(["train", f"storage.uri={run_dir}", f"storage.cache_dir={cache_dir}", *SHORT, "tracking.mlflow=true",
               f"tracking.mlflow_uri=sqlite:///{run_dir}/mlflow.db", "tracking.wandb=true"])
    return run_dir


@pytest.fixture(scope="session")
def uninterrupted(uninterrupted_dir) -> dict[int, dict]:
    return metrics_by_step(uninterrupted_dir)


def _replayable(metrics: dict) -> dict:
    """Every metric but wall-clock ones (timings and rates)."""
    return {k: v for k, v in metrics.items() if not k.startswith("timing_s/") and not k.endswith("_per_s")}


def assert_same(a: dict, b: dict, step: int):
    a, b = _replayable(a), _replayable(b)
    assert sorted(a) == sorted(b), f"step {step}: metrics present in one run only: {sorted(set(a) ^ set(b))}"
    for key in a:
        assert b[key] == pytest.approx(a[key], abs=TOL, rel=TOL), f"step {step} {key}: {a[key]} vs {b[key]}"


def assert_same_run(a: dict[int, dict], b: dict[int, dict]):
    assert sorted(a) == sorted(b)
    for step in a:
        assert_same(a[step], b[step], step)


def assert_same_weights(policy_a: str, policy_b: str):
    from safetensors.torch import load_file

    a, b = (load_file(os.path.join(d, "model.safetensors")) for d in (policy_a, policy_b))
    assert sorted(a) == sorted(b)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=TOL, atol=TOL, msg=lambda m, name=name: f"{name}: {m}")


def test_stopped_run_resumes_where_it_left_off(tmp_path, cache_dir, uninterrupted, uninterrupted_dir):
    run_dir = str(tmp_path / "run")
    common = ["train", f"storage.uri={run_dir}", f"storage.cache_dir={cache_dir}", *SHORT]
    crashed, victim = run_siirl_killing_a_rank(common + ["trainer.retries=0"], run_dir, after_step=3)
    assert crashed.returncode != 0
    assert "rank 0 (Dask worker" in crashed.stdout and f"pid {victim})" in crashed.stdout, crashed.stdout[-4000:]
    saved = [s for s, _ in ckpt.complete_checkpoints(run_dir)]
    assert saved[0] == 2 and saved[-1] < 6, saved  # killed after step 3, before the end

    run_siirl(common + ["trainer.resume=auto"])
    s = summary(run_dir)
    assert s["resumed_from_step"] == saved[-1] and s["steps"] == 6
    assert sorted(metrics_by_step(run_dir)) == [1, 2, 3, 4, 5, 6]
    assert_same_run(uninterrupted, metrics_by_step(run_dir))
    assert_same_weights(os.path.join(uninterrupted_dir, "final_policy"), s["final_policy"])


def test_failed_iteration_is_retried_from_checkpoint(tmp_path, cache_dir, uninterrupted, uninterrupted_dir):
    """A rank's process killed mid-run: Prefect retries the iteration on a rebuilt rank
    group restored from the newest checkpoint, and the log has each step once."""
    run_dir = str(tmp_path / "run")
    proc, _ = run_siirl_killing_a_rank(["train", f"storage.uri={run_dir}", f"storage.cache_dir={cache_dir}", *SHORT,
                                        "trainer.retries=1"], run_dir, after_step=3)
    assert proc.returncode == 0, proc.stdout[-5000:]
    restored = re.search(r"restored every rank from checkpoint step (\d+)", proc.stdout)
    assert restored and int(restored.group(1)) in (2, 4), proc.stdout[-5000:]
    # The replayed steps applied their updates once: everything matches.
    assert_same_run(uninterrupted, metrics_by_step(run_dir))
    assert_same_weights(os.path.join(uninterrupted_dir, "final_policy"), os.path.join(run_dir, "final_policy"))


def test_save_error_with_continue_keeps_training(tmp_path, cache_dir, uninterrupted):
    """storage.on_save_error=continue: a checkpoint that cannot be written is logged and
    skipped; training goes on unchanged and later checkpoints are saved."""
    run_dir = str(tmp_path / "run")
    blocked = ckpt.step_dir(run_dir, 2)
    os.makedirs(os.path.dirname(blocked))
    open(blocked, "w").close()  # a file where step 2's folder must go: its save fails
    proc = run_siirl(["train", f"storage.uri={run_dir}", f"storage.cache_dir={cache_dir}", *SHORT,
                      "storage.on_save_error=continue"])
    assert "checkpoint step 2 not saved, training continues" in proc.stdout + proc.stderr
    assert [s for s, _ in ckpt.complete_checkpoints(run_dir)] == [4, 6]
    assert_same_run(uninterrupted, metrics_by_step(run_dir))


def flow_run_state(name: str, temporary_server: bool = False) -> str:
    """The state Prefect's database holds for the flow run of that name, read by a new
    process as the Prefect UI would."""
    code = ("import sys\nfrom prefect.client.orchestration import get_client\n"
            "from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName\n"
            "with get_client(sync_client=True) as c:\n"
            "    runs = c.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[sys.argv[1]])))\n"
            "    print('STATE', ','.join(r.state.type.value for r in runs))\n")
    out = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True,
                         env=siirl_env(temporary_server), timeout=300)
    found = re.search(r"^STATE (.*)$", out.stdout, re.M)
    assert found, out.stdout + out.stderr
    return found.group(1)


def _named_semaphores() -> set[str]:
    """Python multiprocessing's named semaphores (Linux keeps them in /dev/shm)."""
    return set(glob.glob("/dev/shm/sem.mp-*"))


def _semaphores_held_by(pid: int) -> set[str]:
    """The named semaphores a process and its descendants have mapped (not those of other
    programs running on the machine)."""
    import psutil

    held = set()
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            held.update(m.path for m in process.memory_maps() if m.path.startswith("/dev/shm/sem.mp-"))
        except psutil.Error:  # ended meanwhile
            pass
    return held


def test_killed_flow_process_leaves_nothing_running_and_its_run_resumes(tmp_path, cache_dir, uninterrupted):
    """SIGKILL of `siirl train` itself (with cluster=local it holds the Dask scheduler and,
    without a Prefect server, starts Prefect's temporary server, as here): every process it
    started ends, its flow run is Crashed in Prefect's database, and the same command
    resumes from the newest checkpoint."""
    run_dir = str(tmp_path / "run")
    common = ["train", f"storage.uri={run_dir}", f"storage.cache_dir={cache_dir}", *SHORT]
    at_kill = set()

    def the_flow_process(p) -> int:
        at_kill.update(_semaphores_held_by(p.pid))
        return p.pid

    proc, victim, left = run_siirl_killing(common + ["--verbose"], run_dir, after_step=3, choose=the_flow_process,
                                           temporary_server=True)
    assert proc.returncode == -signal.SIGKILL
    assert "distributed.scheduler - State start" in proc.stdout  # --verbose: the libraries' output too
    assert left == [], [p.cmdline() for p in left]
    # The run's processes held named semaphores in /dev/shm; none outlives them.
    assert at_kill and not at_kill & _named_semaphores(), sorted(at_kill)
    name = re.search(r"Beginning flow run '([^']+)'", proc.stdout).group(1)
    assert f"siirl: process {victim} ended without cleaning up: marked flow run(s)" in proc.stdout, proc.stdout[-3000:]
    assert flow_run_state(name, temporary_server=True) == "CRASHED"

    resumed = run_siirl(common, temporary_server=True)
    saved = summary(run_dir)["resumed_from_step"]
    assert saved in (2, 4), saved
    assert_same_run(uninterrupted, metrics_by_step(run_dir))
    # Quiet by default: none of the libraries' start-up chatter a user cannot act on.
    said = resumed.stdout + resumed.stderr
    for noise in ("distributed.", "Setting accelerator to CPU", "FutureWarning", "NUMA binding", "Loading weights",
                  "Writing model shards", "Triton", "Running hook", "Loading safetensors", "still alive"):
        assert noise not in said, noise
    assert "Beginning flow run" in said and "siirl-train summary" in said


def test_a_run_reports_progress_curves_and_summary_in_prefect(uninterrupted_dir):
    """What an operator sees without reading the JSONL: curves.png in the run folder, and
    in Prefect's database (as the UI reads it) the progress and summary artifacts of the
    flow run that summary.json names."""
    s = summary(uninterrupted_dir)
    assert s["curves"] == os.path.join(uninterrupted_dir, "curves.png") and os.path.getsize(s["curves"]) > 10_000
    code = ("import json, sys\nfrom prefect.client.orchestration import get_client\n"
            "from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId\n"
            "with get_client(sync_client=True) as c:\n"
            "    arts = c.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId("
            "any_=[sys.argv[1]])))\n"
            "    print('ARTS', json.dumps({a.key: [a.type, a.data] for a in arts}))\n")
    out = subprocess.run([sys.executable, "-c", code, s["flow_run_id"]], capture_output=True, text=True,
                         env=siirl_env(), timeout=300).stdout
    found = re.search(r"^ARTS (.*)$", out, re.M)
    assert found, out[-3000:]
    arts = json.loads(found.group(1))
    kind, progress = arts["siirl-train-progress"]
    assert kind == "progress" and float(progress) == 100.0, out[-3000:]
    kind, report = arts["siirl-train-summary"]
    assert kind == "markdown" and "| val_accuracy_before |" in report and "greedy, held-out prompts" in report
    # The report: the result in a line, the settings, where the time went, the curves inline.
    assert (f"Held-out accuracy (greedy): **{s['val_accuracy_before']:.3f} -> {s['val_accuracy_after']:.3f}**"
            in report), report[:2000]
    assert "| algorithm | grpo |" in report and "| rollout | " in report and "| update | " in report
    assert "![training curves](data:image/png;base64," in report


def test_siirl_runs_reads_a_real_run_folder(uninterrupted_dir):
    """`siirl runs` as an operator types it, on the folder a real run wrote."""
    s = summary(uninterrupted_dir)
    root, name = os.path.split(uninterrupted_dir)
    listed = run_siirl(["runs", root]).stdout
    row = next(line for line in listed.splitlines() if f"│ {name} " in line)
    cells = [c.strip() for c in row.split("│")[1:-1]]
    assert cells == [name, "completed", "6/6", f"{s['val_accuracy_before']:.3f}", f"{s['val_accuracy_after']:.3f}",
                     "step 6", s["flow_run"]], row
    # Where the policy started, and how its warm start went.
    assert re.fullmatch(r"\d+ of \d+(, stopped at sft.target_accuracy=[\d.]+)?", s["warm_start_steps"]), s
    assert 0 <= s["warm_start_accuracy"] <= 1 and os.path.isfile(os.path.join(s["warm_start"], "warm_start.json"))
    # The log opens with the evaluation before training, as step 0.
    assert metrics_by_step(uninterrupted_dir, initial=True)[0] == {"step": 0, "val/accuracy": s["val_accuracy_before"]}
    shown = run_siirl(["runs", "show", name, root]).stdout
    assert f"curves: {s['curves']}" in shown and "run_dir" in shown and s["final_policy"] in shown


def test_a_real_run_is_tracked_in_wandb_offline(uninterrupted_dir):
    """Read back from W&B's offline run files: every step's metrics as metrics.jsonl has
    them, the held-out accuracy before (step 0) and after (step 6), the config."""
    from tests.test_wandb_tracking import wandb_history

    s = summary(uninterrupted_dir)
    config, steps, _ = wandb_history(uninterrupted_dir)
    assert config["trainer"]["steps"] == 6 and config["model"]["size"] == "tiny"
    logged, history = metrics_by_step(uninterrupted_dir), dict(steps)
    assert sorted(history) == list(range(7))
    for step, row in logged.items():
        assert history[step]["reward/mean"] == pytest.approx(row["reward/mean"]), step
    assert history[0]["val/accuracy"] == pytest.approx(s["val_accuracy_before"])
    assert history[6]["val/accuracy"] == pytest.approx(s["val_accuracy_after"])


def test_a_real_run_is_tracked_in_mlflow(uninterrupted_dir):
    """Read back through MLflow's client: every step's metrics as metrics.jsonl has them,
    the held-out accuracy before (step 0) and after (step 6), the config, the policy."""
    from mlflow.tracking import MlflowClient

    s = summary(uninterrupted_dir)
    client = MlflowClient(f"sqlite:///{uninterrupted_dir}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("siirl").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["siirl.flow_run"] == s["flow_run"]
    assert run.data.params["trainer.steps"] == "6" and run.data.params["model.size"] == "tiny"
    logged = metrics_by_step(uninterrupted_dir)
    for key in ("reward/mean", "actor/entropy", "actor/grad_norm"):
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert history == pytest.approx({step: row[key] for step, row in logged.items()}), key
    val = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val/accuracy")}
    assert val[0] == pytest.approx(s["val_accuracy_before"]) and val[6] == pytest.approx(s["val_accuracy_after"])
    assert "final_policy/model.safetensors" in [f.path for f in client.list_artifacts(run.info.run_id,
                                                                                         "final_policy")]
