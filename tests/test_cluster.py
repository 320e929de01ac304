"""Connecting to a Dask scheduler by address fails with a message naming cluster.address
and what was missing there, not a raw connection timeout."""
import pytest
from distributed import LocalCluster

from infra.cluster import dask_client
from siirl_core.compose import compose_config
from siirl_core.config import ConfigError, to_dict
from tests.conftest import _free_port


def test_address_without_a_scheduler_is_named():
    address = f"tcp://127.0.0.1:{_free_port()}"
    with pytest.raises(ConnectionError, match=rf"cluster.address='{address}': no Dask scheduler answered within "
                                              r"2 s .*start one \(`dask scheduler`\)"):
        with dask_client("address", 1, address=address, connect_timeout_s=2):
            pass


def test_too_few_workers_at_the_address_are_counted():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with pytest.raises(ConnectionError, match=r"1 Dask workers joined within 3 s; cluster.n_workers=2 asks for "
                                                  r"one per rank"):
            with dask_client("address", 2, address=cluster.scheduler_address, connect_timeout_s=3):
                pass


def test_address_kind_needs_an_address():
    with pytest.raises(ConfigError, match=r"cluster=address needs cluster.address=tcp://host:port"):
        compose_config(["cluster=address"])


def test_ranks_get_every_local_path_absolute(tmp_path, monkeypatch):
    """Ranks on other machines run in their own working folders: what the driver resolved
    against its own must reach them absolute, and URIs as they are."""
    from infra.worker_prep import absolute_paths

    monkeypatch.chdir(tmp_path)
    cfg = to_dict(compose_config(["storage.cache_dir=cache"]))
    # Fields whose files the config checks would want to exist, set on the plain dict:
    cfg["model"]["path"] = "models/m"
    cfg["task"].update(train_files=["data/a.jsonl"], val_files=["b.jsonl"])
    ranks_cfg, model = absolute_paths(cfg, "runs/x", "cache/sft")
    assert ranks_cfg["storage"]["uri"] == f"{tmp_path}/runs/x"  # the default run folder, named
    assert ranks_cfg["storage"]["cache_dir"] == f"{tmp_path}/cache"
    assert ranks_cfg["model"]["path"] == f"{tmp_path}/models/m"
    assert (ranks_cfg["task"]["train_files"], ranks_cfg["task"]["val_files"]) == ([f"{tmp_path}/data/a.jsonl"],
                                                                                [f"{tmp_path}/b.jsonl"])
    assert model == f"{tmp_path}/cache/sft"
    assert cfg["storage"]["uri"] == ""  # the driver's own config is left as given

    s3 = to_dict(compose_config(["storage.uri=s3://bucket/run"]))
    ranks_cfg, models = absolute_paths(s3, "runs/y", {"speaker": "/abs/a", "listener": "rel/b"})
    assert ranks_cfg["storage"]["uri"] == "s3://bucket/run"
    assert models == {"speaker": "/abs/a", "listener": f"{tmp_path}/rel/b"}
