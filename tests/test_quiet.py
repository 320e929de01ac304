"""Quiet by default (flows/quiet.py): what a run's processes are told, and what stays off
the console. tests/e2e/test_resume.py checks a real run's output, quiet and --verbose."""
import json
import logging
import os
import subprocess
import sys

import torch

from flows.quiet import QUIET_ENV, _not_dask_info
from tests.conftest import ROOT

PROBE = ("import json, logging, os\nfrom flows.quiet import quiet\nquiet()\n"
         "print(json.dumps({'env': {k: os.environ.get(k) for k in %r},\n"
         "                  'engine': logging.getLogger('prefect.engine').level}))\n")


def probe(**env) -> dict:
    keys = sorted(QUIET_ENV) + ["DS_ACCELERATOR"]
    clean = {k: v for k, v in os.environ.items() if k not in keys + ["SIIRL_VERBOSE"]}
    out = subprocess.run([sys.executable, "-c", PROBE % keys], cwd=ROOT, capture_output=True, text=True,
                         env=dict(clean, **env), timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_run_tells_its_processes_to_be_quiet_but_keeps_what_the_user_set():
    told = probe(TORCH_CPP_LOG_LEVEL="INFO")
    assert told["env"]["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and told["env"]["VLLM_LOGGING_LEVEL"] == "ERROR"
    assert told["env"]["TORCH_CPP_LOG_LEVEL"] == "INFO"  # the user's own setting wins
    if not torch.cuda.is_available():
        assert told["env"]["DS_ACCELERATOR"] == "cpu"  # nothing to detect: DeepSpeed need not guess
    assert told["engine"] == logging.WARNING


def test_verbose_changes_nothing():
    told = probe(SIIRL_VERBOSE="1")
    assert all(v is None for v in told["env"].values()) and told["engine"] == logging.NOTSET


def test_dask_info_stays_off_the_console_and_its_warnings_show():
    def record(name: str, level: int, message: str = "m") -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, message, None, None)

    assert not _not_dask_info(record("distributed.scheduler", logging.INFO))
    assert _not_dask_info(record("distributed.nanny", logging.WARNING))
    assert _not_dask_info(record("prefect.flow_runs", logging.INFO))
    # Closing the cluster on a busy machine: a rank slow to exit is ended, nothing to act on.
    assert not _not_dask_info(record("distributed.nanny", logging.WARNING,
                                     "Worker process still alive after %.1f seconds, killing"))
