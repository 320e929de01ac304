"""MLflow tracking (siirl_core/tracking.py) against a real MLflow store (SQLite), read
back through MLflow's own client: params, every step's metrics, the final policy, a
resume that continues the same MLflow run; a missing MLflow is a config error. The
e2e run in tests/e2e/test_resume.py tracks a real training run."""
import importlib.util
import os

import pytest
from mlflow.tracking import MlflowClient

from siirl_core.compose import compose_config
from siirl_core.config import ConfigError
from siirl_core.tracking import build_trackers, flat_params


def test_flat_params_name_every_leaf_with_its_dotted_key():
    assert flat_params({"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2], "f": None, "g": True}) == {
        "a.b": "1", "a.c.d": "x", "e": "[1, 2]", "f": "null", "g": "true"}


def test_a_run_is_tracked_and_a_resume_continues_it(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = compose_config(["tracking.mlflow=true", f"tracking.mlflow_uri={uri}", "tracking.experiment=unit",
                          "run_name=tracked", "trainer.lr=0.003"])
    run_dir = str(tmp_path / "run")
    os.makedirs(run_dir)
    policy = tmp_path / "final_policy"
    policy.mkdir()
    (policy / "config.json").write_text("{}")

    [tracker] = build_trackers(cfg, run_dir, resumed_from=0, flow_run_name="calm-owl")
    for step in (1, 2, 3):
        tracker.write(step, {"reward/mean": step / 10, "actor/entropy": 1.0 - step / 10})
    tracker.fail()  # the run stopped after step 3
    [resumed] = build_trackers(cfg, run_dir, resumed_from=2)  # resumed from the checkpoint of step 2
    assert resumed.run_id == tracker.run_id
    for step in (3, 4):
        resumed.write(step, {"reward/mean": step / 10, "actor/entropy": 1.0 - step / 10})
    resumed.finish(str(policy))

    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("unit").experiment_id])
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    assert run.data.params["trainer.lr"] == "0.003" and run.data.params["algorithm.adv_estimator"] == "grpo"
    assert run.data.tags["siirl.flow_run"] == "calm-owl"
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "reward/mean")]
    assert sorted(history) == [(1, 0.1), (2, 0.2), (3, 0.3), (3, 0.3), (4, 0.4)]  # step 3 replayed, same value
    assert [f.path for f in client.list_artifacts(run.info.run_id, "final_policy")] == ["final_policy/config.json"]
    # The artifacts sit beside the SQLite file, not in ./mlruns of whatever folder the run started in.
    [stored] = list((tmp_path / "mlflow-artifacts").rglob("final_policy/config.json"))
    assert stored.read_text() == "{}"


def test_a_store_that_cannot_be_opened_stops_the_run_naming_the_key(tmp_path):
    (tmp_path / "a-file").write_text("")
    uri = f"sqlite:///{tmp_path}/a-file/mlflow.db"  # a folder that cannot exist
    cfg = compose_config(["tracking.mlflow=true", f"tracking.mlflow_uri={uri}"])
    with pytest.raises(ConnectionError, match=r"tracking.mlflow_uri='sqlite:///.*a-file/mlflow.db': cannot start an "
                                              r"MLflow run \(FileExistsError"):
        build_trackers(cfg, str(tmp_path), resumed_from=0)


def test_tracking_without_mlflow_installed_is_a_config_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"tracking.mlflow=true needs MLflow.*pip install 'siirl\[tracking\]'"):
        compose_config(["tracking.mlflow=true"])


def test_a_store_fault_mid_run_costs_the_steps_it_missed_which_are_named(tmp_path, caplog):
    """The store's file is overwritten from outside while step 2 is logged, then put back
    (a fault, then recovery): training would go on, step 2 is missing from MLflow, and the
    end of the run names it in the log and on the MLflow run."""
    import json

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = compose_config(["tracking.mlflow=true", f"tracking.mlflow_uri={uri}", "tracking.log_policy=false"])
    [tracker] = build_trackers(cfg, str(tmp_path), resumed_from=0)
    tracker.write(1, {"reward/mean": 0.1})
    with open(tmp_path / "mlflow.db", "r+b") as db:
        header = db.read(100)
        db.seek(0)
        db.write(b"\0" * 100)  # no longer a SQLite file
        db.flush()
        tracker.write(2, {"reward/mean": 0.2})
        db.seek(0)
        db.write(header)
    tracker.write(3, {"reward/mean": 0.3})
    tracker.finish()

    client = MlflowClient(uri)
    run = client.get_run(tracker.run_id)
    assert [m.step for m in client.get_metric_history(tracker.run_id, "reward/mean")] == [1, 3]
    assert json.loads(run.data.tags["siirl.steps_not_logged"]) == [2] and run.info.status == "FINISHED"
    assert "1 steps were not logged (first 2, last 2); metrics.jsonl has them" in caplog.text
