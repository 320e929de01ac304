"""The benchmark's peak-memory column measures each side's own process, not the
driver that started it (Linux carries getrusage's ru_maxrss across fork and exec)."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

CHILD = ("import json, resource, sys; sys.path.insert(0, sys.argv[1]); from process_memory import peak_rss_mib; "
         "print(json.dumps([peak_rss_mib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]))")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is read from /proc")
def test_a_side_started_by_a_large_driver_reports_its_own_peak():
    ballast = bytearray(400 * 2**20)  # the driver holds 400 MiB, touched so it is resident
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    out = subprocess.run([sys.executable, "-c", CHILD, os.path.join(ROOT, "bench")], capture_output=True,
                         text=True, check=True).stdout
    own, inherited = json.loads(out)
    assert inherited >= 400  # what the benchmark used to report: the driver's resident set
    assert 1 < own < 100  # a bare interpreter
    del ballast
