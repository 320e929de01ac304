import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import _free_port
from tests.e2e.helpers import SHARED_SERVER, wait_healthy
from tests.e2e.test_resume import uninterrupted, uninterrupted_dir  # noqa: F401 - session fixtures shared by e2e modules


@pytest.fixture(scope="session", autouse=True)
def prefect_server(tmp_path_factory):
    """One Prefect server for the session's `siirl` runs (PREFECT_API_URL), as an operator
    runs one: each run then skips starting Prefect's temporary server (about 5 s). The
    tests of what the temporary server does opt out (helpers.siirl_env)."""
    home = tmp_path_factory.mktemp("prefect")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    prefect = str(Path(sys.executable).with_name("prefect"))
    with open(home / "server.log", "w") as log:
        server = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(api, server)
        SHARED_SERVER["api"] = api  # for helpers.siirl_env; the pytest process's own env is left alone
        yield api
    finally:
        SHARED_SERVER.pop("api", None)
        server.terminate()
        server.wait(timeout=60)
