"""Making Dask workers ready for ranks. Workers started by hand (`dask worker` on
other machines, cluster=address) outlive runs and run in their own working folders:
before ranks start there, every path a rank uses is made absolute, workers left
holding a previous run's rank are restarted, and each worker must see the model
folders and the run folder the driver sees."""
from __future__ import annotations

import copy
import logging
import os
import sys
import uuid

from distributed import Client

from siirl_core.config import ConfigError

log = logging.getLogger("siirl.worker_prep")


def for_ranks(path: str) -> str:
    """A local path made absolute against the driver's working folder (ranks resolve
    relative ones against their own); a URI (s3://...) as it is."""
    return path if "://" in path else os.path.abspath(path)


def absolute_paths(cfg: dict, run_dir: str, model_path: str | dict) -> tuple[dict, str | dict]:
    """The config and model folders as ranks must see them: local paths made absolute
    against the driver's working folder, and the run folder (default runs/<run_name>)
    named explicitly, since ranks resolve relative paths against their own."""
    out = copy.deepcopy(cfg)
    storage, task, model = out["storage"], out["task"], out["model"]
    storage["uri"] = for_ranks(storage["uri"] or run_dir)
    storage["cache_dir"] = for_ranks(storage["cache_dir"])
    if model["path"]:
        model["path"] = for_ranks(model["path"])
    task["train_files"] = [for_ranks(p) for p in task["train_files"]]
    task["val_files"] = [for_ranks(p) for p in task["val_files"]]
    if isinstance(model_path, dict):
        return out, {pid: for_ranks(p) for pid, p in model_path.items()}
    return out, for_ranks(model_path)


def holds_a_rank() -> bool:
    """Run on a worker: True when an earlier rank initialised torch.distributed in this
    process (its engines may still hold memory and its process group a dead peer)."""
    dist = sys.modules.get("torch.distributed")
    return bool(dist is not None and dist.is_available() and dist.is_initialized())


def restart_used_workers(client: Client, workers: list[str]) -> bool:
    """Restart the workers' processes when any still holds a rank of an earlier run, so
    every run starts on fresh processes as it does on a cluster it starts itself."""
    used = [w for w, held in client.run(holds_a_rank, workers=workers).items() if held]
    if not used:
        return False
    log.warning("Dask workers %s hold ranks of an earlier run: restarting them", used)
    try:
        client.restart(wait_for_workers=False)  # every worker: ranks are all the cluster runs
    except Exception as err:
        raise RuntimeError(f"Dask workers {used} hold ranks of an earlier run and could not be restarted "
                           f"({type(err).__name__}: {err}); start workers with a nanny (the default of "
                           f"`dask worker`), or restart them by hand") from None
    return True


def _missing(paths: list[str]) -> list[str]:
    return [p for p in paths if not os.path.exists(p)]


def check_visible(client: Client, workers: list[str], model_dirs: list[str], run_dir: str | None) -> None:
    """Every worker must read each model folder's config.json and see a file the driver
    has just written into the run folder (the same path on a separate disk would not
    show it): an error names the first rank that cannot, and the path."""
    marker = os.path.join(run_dir, f".visible-to-ranks-{uuid.uuid4().hex}") if run_dir else None
    wanted = [os.path.join(d, "config.json") for d in model_dirs]
    if marker:
        os.makedirs(run_dir, exist_ok=True)
        open(marker, "w").close()
        wanted.append(marker)
    try:
        missing = client.run(_missing, wanted, workers=workers)
    finally:
        if marker:
            os.remove(marker)
    for rank, worker in enumerate(workers):
        if missing[worker]:
            first = missing[worker][0]
            what = (f"the run folder {run_dir} (storage.uri; or use storage.uri=s3://...)" if first == marker
                    else f"the model folder {os.path.dirname(first)} (warm starts and made models are "
                         f"kept in storage.cache_dir)")
            raise ConfigError(f"rank {rank} (Dask worker {worker}) cannot see {what}, which the driver "
                              f"sees: ranks on other machines need it on a filesystem every node mounts "
                              f"at the same path")
