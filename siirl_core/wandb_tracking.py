"""Weights & Biases tracking of a training run, driver-side (tracking.wandb): the resolved
config, every step's metrics, and the held-out accuracy before and after training as the
run's summary. Offline by default: the run is written under the run folder's wandb/ and
uploaded later with `wandb sync RUN_FOLDER/wandb/offline-run-*` (tracking.wandb_mode=online
sends it as it goes). A resumed run continues the same W&B run id (kept in wandb_run.json)
and skips the steps it logged before (a replay computes them again, equal)."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import uuid

from siirl_core.config import ConfigError, SiirlConfig, to_dict
from siirl_core.config_rules import config_rule, one_of

log = logging.getLogger(__name__)
RUN_FILE = "wandb_run.json"


@config_rule("tracking.wandb")
def _wandb_installed(cfg: SiirlConfig) -> None:
    one_of("tracking.wandb_mode", cfg.tracking.wandb_mode, {"offline", "online"})
    if cfg.tracking.wandb and importlib.util.find_spec("wandb") is None:
        raise ConfigError("tracking.wandb=true needs Weights & Biases, which is not installed: pip install "
                          "'siirl[tracking]' (wandb)")


class WandbTracker:
    """One W&B run per siirl run folder; `write` per step, `finish` or `fail` at the end."""

    def __init__(self, cfg: SiirlConfig, run_dir: str, resumed_from: int, flow_run_name: str = "") -> None:
        import wandb

        self.path = os.path.join(run_dir, RUN_FILE)
        previous = self._previous() if resumed_from else None
        run_id = previous["run_id"] if previous else uuid.uuid4().hex[:12]
        self.last_step = previous["last_step"] if previous else -1
        verbose = os.environ.get("SIIRL_VERBOSE", "") not in ("", "0")
        settings = wandb.Settings(console="off", silent=not verbose, x_disable_stats=True, disable_git=True,
                                  save_code=False, disable_job_creation=True)
        self.run = wandb.init(project=cfg.tracking.experiment, name=cfg.run_name or None, id=run_id,
                              dir=run_dir, mode=cfg.tracking.wandb_mode, resume="allow", config=to_dict(cfg),
                              tags=[f"flow_run:{flow_run_name}"] if flow_run_name else None, settings=settings)
        self._save()

    def _previous(self) -> dict | None:
        try:
            with open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def _save(self) -> None:
        with open(self.path, "w") as f:
            json.dump({"run_id": self.run.id, "last_step": self.last_step, "dir": self.run.dir}, f)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if step < self.last_step:  # logged before the resume: W&B takes no step below its latest
            return
        self.run.log(dict(metrics), step=step)
        self.last_step = step
        self._save()

    def finish(self, final_policy: str = "") -> None:
        self.run.finish(exit_code=0)

    def fail(self) -> None:
        self.run.finish(exit_code=1)
