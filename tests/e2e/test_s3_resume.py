"""A run checkpoints to s3:// (moto's server on loopback, real HTTP), is stopped, and
resumes from s3:// at the right step with the right state; a storage that refuses the
checkpoints' manifests stops the resume instead of starting over; no credential leaks."""
import json
import os

import pytest

from siirl_core import checkpoint as ckpt
from tests.e2e.helpers import metrics_by_step, run_siirl, summary
from tests.e2e.test_resume import SHORT, assert_same

pytestmark = pytest.mark.slow


def test_stopped_run_resumes_from_s3(tmp_path, cache_dir, s3_server, uninterrupted):
    uri, ep = "s3://siirl/runs/e2e", s3_server["endpoint"]
    common = ["train", f"run_name=s3-{tmp_path.name}", f"storage.uri={uri}", f"storage.endpoint_url={ep}",
              f"storage.cache_dir={cache_dir}", *SHORT]
    crashed = run_siirl(common + ["trainer.fail_at_step=5", "trainer.retries=0"], check=False)
    assert crashed.returncode != 0
    assert "trainer.fail_at_step=5" in crashed.stderr, crashed.stderr[-3000:]
    assert [s for s, _ in ckpt.complete_checkpoints(uri, ep)] == [2, 4]
    manifest = ckpt.verify(ckpt.step_dir(uri, 4), ep)
    assert manifest["step"] == 4 and "policy/model.safetensors" in manifest["files"]
    run_dir = summary_dir = os.path.join("runs", f"s3-{tmp_path.name}")
    try:
        refused = _refused_manifests_stop_the_resume(common, uri, s3_server["faults"], run_dir)
        resumed_proc = run_siirl(common)
        s = summary(summary_dir)
        assert s["resumed_from_step"] == 4 and s["checkpoints"] == f"{uri}/checkpoints"
        resumed = metrics_by_step(run_dir)
        assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
        for step in (5, 6):
            assert_same(uninterrupted[step], resumed[step], step)
        # Credentials come from the environment and stay there.
        secret = os.environ["AWS_SECRET_ACCESS_KEY"]
        for proc in (crashed, refused, resumed_proc):
            assert secret not in proc.stdout + proc.stderr
        assert secret not in open(os.path.join(run_dir, "config.json")).read()
        assert secret not in json.dumps(ckpt.verify(ckpt.step_dir(uri, 6), ep))
    finally:
        s3_server["faults"].heal()
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)


def _refused_manifests_stop_the_resume(common: list[str], uri: str, faults, run_dir: str):
    """The storage lists the checkpoints but refuses their manifests (HTTP 403): the resume
    stops with an error naming the checkpoint, before any engine starts, and leaves the
    checkpoints and the metrics log as they were (it used to start over from step 0)."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        metrics_before = f.read()
    faults.fail(r"/manifest\.json$", status=403)
    proc = run_siirl(common + [f"storage.endpoint_url={faults.endpoint}"], check=False)
    faults.heal()
    assert proc.returncode != 0
    assert "cannot tell whether it is complete" in proc.stderr and "failed after 3 attempts" in proc.stderr, \
        proc.stderr[-3000:]
    assert "Dask dashboard" not in proc.stderr + proc.stdout
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        assert f.read() == metrics_before
    assert [s for s, _ in ckpt.complete_checkpoints(uri, faults.endpoint)] == [2, 4]
    return proc
