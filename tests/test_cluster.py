"""Connecting to a Dask scheduler by address fails with a message naming cluster.address
and what was missing there, not a raw connection timeout."""
import pytest
from distributed import LocalCluster

from infra.cluster import dask_client
from siirl_core.compose import compose_config
from siirl_core.config import ConfigError
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
