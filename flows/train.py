"""`siirl-train`: warm start if needed, then RL iterations as Prefect tasks over a
Dask cluster of rank workers. The flow only sequences; the work runs on the ranks."""
from __future__ import annotations

from prefect import flow

from flows.retrain import retrain_flow
from flows.watcher import on_running
from flows.training_run import run_training


@flow(name="siirl-train", log_prints=True, on_running=[on_running])
def train_flow(overrides: list[str] | None = None, retrain: bool = False) -> dict:
    """RL training with Hydra overrides. retrain=True runs the `siirl-retrain` flow
    instead (the nightly-retrain deployment): train from the champion, promote if better."""
    if retrain:
        return retrain_flow(overrides)
    return run_training(list(overrides or []))


if __name__ == "__main__":
    import sys

    train_flow(sys.argv[1:])
