"""Experiment trackers of a training run (build_trackers): MLflow here, Weights & Biases
in wandb_tracking.py.

MLflow tracking of a training run, driver-side, beside metrics.jsonl and TensorBoard
(tracking.* in the config): the resolved config as params, every step's metrics, the
held-out accuracy before training (step 0) and after it (the last step), and the final
policy as an artifact. A resumed run continues the same MLflow run (its id is kept in
the run folder's mlflow_run.json); MLflow cannot delete points, so steps replayed after
a resume appear twice in a metric's history, with equal values (the replay is exact).
A tracking server that fails mid-run costs a warning, not the run; the steps it missed
are named at the end and kept as the MLflow run's tag siirl.steps_not_logged."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import time

from siirl_core.config import ConfigError, SiirlConfig, to_dict
from siirl_core.config_rules import config_rule

log = logging.getLogger(__name__)
RUN_FILE = "mlflow_run.json"
DEFAULT_STORE = "runs/mlflow.db"


@config_rule("tracking.mlflow")
def _mlflow_installed(cfg: SiirlConfig) -> None:
    if cfg.tracking.mlflow and importlib.util.find_spec("mlflow") is None:
        raise ConfigError("tracking.mlflow=true needs MLflow, which is not installed: pip install "
                          "'siirl[tracking]' (mlflow-skinny)")


def tracking_uri(cfg: SiirlConfig) -> str:
    return cfg.tracking.mlflow_uri or f"sqlite:///{os.path.abspath(DEFAULT_STORE)}"


def artifact_location(uri: str) -> str | None:
    """A SQLite store keeps its artifacts in mlflow-artifacts/ beside the database file
    (MLflow's own default is ./mlruns under whatever folder the run started in); a server
    decides for itself (None)."""
    if not uri.startswith("sqlite:///"):
        return None
    database = uri[len("sqlite:///"):]
    return "file://" + os.path.join(os.path.dirname(os.path.abspath(database)), "mlflow-artifacts")


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """The nested config as MLflow params: dotted keys, values as text."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, name + "."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, bool)) or value is None else str(value)
    return out


class MlflowTracker:
    """One MLflow run per siirl run folder; `write` per step, `finish` at the end."""

    def __init__(self, cfg: SiirlConfig, run_dir: str, resumed_from: int, flow_run_name: str = "") -> None:
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(cfg)
        self.client = MlflowClient(self.uri)
        self.missed: list[int] = []  # steps MLflow did not take
        experiment = self.client.get_experiment_by_name(cfg.tracking.experiment)
        if experiment is None:
            experiment_id = self.client.create_experiment(cfg.tracking.experiment,
                                                          artifact_location=artifact_location(self.uri))
        else:
            experiment_id = experiment.experiment_id
        self.run_id = self._previous_run(run_dir) if resumed_from else None
        if self.run_id is None:
            run = self.client.create_run(experiment_id, run_name=cfg.run_name,
                                         tags={"siirl.run_dir": os.path.abspath(run_dir),
                                               "siirl.flow_run": flow_run_name})
            self.run_id = run.info.run_id
            self._log_params(flat_params(to_dict(cfg)))
            with open(os.path.join(run_dir, RUN_FILE), "w") as f:
                json.dump({"run_id": self.run_id, "tracking_uri": self.uri}, f)
        else:
            self.client.update_run(self.run_id, status="RUNNING")
        self.log_policy = cfg.tracking.log_policy

    @staticmethod
    def _previous_run(run_dir: str) -> str | None:
        try:
            with open(os.path.join(run_dir, RUN_FILE)) as f:
                return json.load(f)["run_id"]
        except FileNotFoundError:
            return None

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per call
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def write(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        try:
            for i in range(0, len(batch), 1000):  # MLflow takes at most 1000 metrics per call
                self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])
        except Exception as err:  # any client or server fault: tracking must not stop training
            if not self.missed:
                log.warning("MLflow at %s: logging step %d failed (%s); training goes on, later steps are "
                            "tried again", self.uri, step, err)
            self.missed.append(step)

    def fail(self) -> None:
        """Mark the MLflow run failed (the siirl run stopped with an error); a tracking
        fault here must not hide the run's own error."""
        try:
            self.client.set_terminated(self.run_id, "FAILED")
        except Exception as err:  # noqa: BLE001 - the run's own error is the one to see
            log.warning("MLflow at %s: could not mark run %s failed: %s", self.uri, self.run_id, err)

    def finish(self, final_policy: str = "") -> None:
        if self.missed:  # said again at the end, and kept on the MLflow run: its curves have gaps
            log.warning("MLflow at %s: %d steps were not logged (first %d, last %d); metrics.jsonl has them",
                        self.uri, len(self.missed), self.missed[0], self.missed[-1])
            self.client.set_tag(self.run_id, "siirl.steps_not_logged", json.dumps(self.missed))
        if final_policy and self.log_policy:
            self.client.log_artifacts(self.run_id, final_policy, artifact_path="final_policy")
        self.client.set_terminated(self.run_id, "FINISHED")


def build_trackers(cfg: SiirlConfig, run_dir: str, resumed_from: int, flow_run_name: str = "") -> list:
    """The run's trackers (MLflow, W&B), each with write(step, metrics), finish(policy) and
    fail(); none when tracking is off. A store that cannot be reached stops the run here,
    naming its key."""
    trackers = []
    if cfg.tracking.mlflow:
        try:
            trackers.append(MlflowTracker(cfg, run_dir, resumed_from, flow_run_name))
        except Exception as err:  # MLflow raises its own, requests' and SQLAlchemy's errors
            raise ConnectionError(f"tracking.mlflow_uri={tracking_uri(cfg)!r}: cannot start an MLflow run "
                                  f"({type(err).__name__}: {err})") from err
    if cfg.tracking.wandb:
        from siirl_core.wandb_tracking import WandbTracker

        try:
            trackers.append(WandbTracker(cfg, run_dir, resumed_from, flow_run_name))
        except Exception as err:  # wandb raises its own errors (no login, unreachable server)
            raise ConnectionError(f"tracking.wandb_mode={cfg.tracking.wandb_mode}: cannot start a W&B run "
                                  f"({type(err).__name__}: {err})") from err
    return trackers
