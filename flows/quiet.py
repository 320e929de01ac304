"""Quiet by default: a run prints what the user can act on (its own progress, warnings
and errors), not the libraries' start-up chatter: Dask's INFO lines, transformers'
weight-loading bars, DeepSpeed's "Setting accelerator to CPU", vLLM's deprecation
warnings and libtorch's NUMA notice on CPU ranks, Prefect's hook lines. `siirl <cmd>
--verbose` (or SIIRL_VERBOSE=1, e.g. a deployment's job variables) shows everything.

Environment variables reach the processes a run starts (Dask workers inherit them), so
`quiet()` runs before the cluster starts: in the CLI and at the start of every flow.
A variable the user has set is left as it is.
"""
from __future__ import annotations

import logging
import os
import warnings

VERBOSE_ENV = "SIIRL_VERBOSE"
QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" / "Writing model shards" bars
    "TORCH_CPP_LOG_LEVEL": "ERROR",  # libtorch's NUMA-binding notice when vLLM starts on a CPU rank
    "VLLM_LOGGING_LEVEL": "ERROR",  # vLLM's start-up INFO and Triton notices; its errors still show
    "PYTHONWARNINGS": "ignore::FutureWarning:vllm.triton_utils.dispatcher",  # a deprecation inside vLLM
}


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def _not_dask_info(record: logging.LogRecord) -> bool:
    """Dask's INFO lines (scheduler and nanny start-up and shutdown) stay off the console,
    and so does the nanny's warning that a worker took more than a few seconds to exit when
    the run closes its cluster (a rank freeing its engines on a busy machine; the nanny
    ends it); its other warnings and errors show. Handlers below the console (the rank
    group's record of why a worker died) still receive them."""
    if not record.name.startswith("distributed"):
        return True
    if record.name == "distributed.nanny" and record.getMessage().startswith("Worker process still alive after"):
        return False
    return record.levelno >= logging.WARNING


def quiet() -> None:
    """Set up this process and the processes it starts to print only what matters,
    unless verbose. Safe to call more than once."""
    if verbose():
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    import torch

    if not torch.cuda.is_available():  # nothing to detect: say CPU, and DeepSpeed stops warning that it guessed
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"vllm\.")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # this process may have imported transformers before the variable
    except ImportError:
        pass
    logging.getLogger("prefect.engine").setLevel(logging.WARNING)  # "Running hook 'on_running'", twice per flow
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its store's set-up lines (tracking.mlflow)
    for handler in logging.getLogger().handlers:  # Prefect's console handler
        if _not_dask_info not in handler.filters:
            handler.addFilter(_not_dask_info)
