"""Shared fixtures. Heavy ones (a warm-started model, an in-process rank worker with
a real vLLM engine and a real DeepSpeed engine) are built once per session."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
    """Base models and warm starts shared by every test of the session (and by the
    e2e runs, through storage.cache_dir)."""
    return os.environ.get("SIIRL_TEST_CACHE") or str(tmp_path_factory.mktemp("siirl-cache"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    from siirl_core.data.arithmetic import ALPHABET
    from siirl_core.models import create_tiny_model

    return create_tiny_model(str(tmp_path_factory.mktemp("tiny") / "model"), ALPHABET, size="tiny", seed=0)


@pytest.fixture(scope="session")
def warm_model(tmp_path_factory, tiny_model) -> str:
    """A briefly warm-started tiny model: some accuracy, far from perfect."""
    from siirl_core.data import ArithmeticTask
    from siirl_core.sft import train_sft

    out = str(tmp_path_factory.mktemp("warm") / "model")
    return train_sft(tiny_model, out, ArithmeticTask(), steps=150, batch_size=64, lr=3e-3, seed=0)


@pytest.fixture(scope="session")
def rank_worker(warm_model):
    """One in-process RankWorker (rank 0 of 1) with vLLM rollout and DeepSpeed ZeRO-2."""
    from siirl_core.compose import compose_config
    from siirl_core.config import to_dict
    from siirl_core.worker import RankWorker

    cfg = compose_config(["trainer.prompts_per_step=16", "trainer.lr=1e-3", "task.eval_size=100"])
    worker = RankWorker(to_dict(cfg), warm_model, rank=0, world_size=1, master_port=_free_port())
    worker.setup()
    return worker


def watch_batches(worker, seen: list | None = None) -> list:
    """Append a pipeline node (as a user's custom node would be) that keeps each
    iteration's batch after every other node ran; returns the list it fills."""
    seen = [] if seen is None else seen
    worker.work.pipeline = [*worker.work.pipeline, lambda _w, batch, _bag: seen.append(batch)]
    return seen


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def siirl_cli() -> list[str]:
    return [sys.executable, "-m", "flows.cli"]


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server (its own process) on loopback, for real HTTP through s3fs.
    `endpoint` talks to it directly; `proxy_endpoint` goes through a TCP relay the
    tests can cut to make the storage go away and come back with its data; `faults`
    (faults.endpoint) is an HTTP proxy that answers chosen requests with an error.
    Credentials are dummies set in the environment, as the AWS chain expects."""
    import subprocess
    import time
    import urllib.request

    import boto3

    from tests.http_fault_proxy import HttpFaultProxy
    from tests.tcp_relay import TcpRelay

    os.environ.update(AWS_ACCESS_KEY_ID="siirl-test-key", AWS_SECRET_ACCESS_KEY="siirl-test-SECRET-42",
                      AWS_DEFAULT_REGION="us-east-1")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    # s3fs's mkdir sends a location constraint moto rejects: create buckets with boto3.
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="siirl")
    relay = TcpRelay(("127.0.0.1", port))
    relay.start()
    faults = HttpFaultProxy(("127.0.0.1", port))
    yield {"endpoint": endpoint, "proxy_endpoint": f"http://127.0.0.1:{relay.port}", "relay": relay,
           "faults": faults}
    faults.close()
    relay.stop()
    proc.terminate()
    proc.wait(timeout=10)
