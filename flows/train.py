"""`siirl-train`: warm start if needed, then RL iterations as Prefect tasks over a
Dask cluster of rank workers. The flow only sequences; the work runs on the ranks."""
from __future__ import annotations

from prefect import flow, get_run_logger

from flows.quiet import quiet
from flows.retrain import retrain_flow
from flows.training_run import run_training
from flows.watcher import on_running


class CrashRerunLimit(RuntimeError):
    """A deployment run crashed more times in a row than its max_crash_reruns allows."""


@flow(name="siirl-train", log_prints=True, on_running=[on_running])
def train_flow(overrides: list[str] | None = None, retrain: bool = False, crash_reruns: int = 0,
               max_crash_reruns: int = 3) -> dict:
    """RL training with Hydra overrides. retrain=True runs the `siirl-retrain` flow
    instead (the nightly-retrain deployment): train from the champion, promote if better.

    crash_reruns counts how many runs before this one crashed in a row: the
    siirl-train/default deployment's trigger (prefect.yaml) starts the same run again,
    with this number one higher, when a run of it crashes (its process killed, out of
    memory, the machine lost). The rerun resumes like the same command typed again
    (trainer.resume=auto: the newest complete checkpoint). Past max_crash_reruns the run
    stops at once: something kills it every time and needs a person."""
    if crash_reruns > max_crash_reruns:
        raise CrashRerunLimit(f"this run crashed {crash_reruns} times in a row (max_crash_reruns="
                              f"{max_crash_reruns}); not starting it again: see the crashed runs' logs")
    quiet()
    if crash_reruns:
        get_run_logger().warning("rerun %d of %d after a crash: resuming as the same run", crash_reruns,
                                 max_crash_reruns)
    if retrain:
        return retrain_flow(overrides)
    return run_training(list(overrides or []))


if __name__ == "__main__":
    import sys

    train_flow(sys.argv[1:])
