"""A run checkpoints to s3:// (moto's server on loopback, real HTTP), is killed, and
resumes from s3:// with the right state; a storage that refuses the checkpoints'
manifests stops the resume instead of starting over; a newest checkpoint whose file
fails its checksum on download gives way to the one before; no credential leaks."""
import json
import os

import pytest

from siirl_core import checkpoint as ckpt
from tests.e2e.helpers import metrics_by_step, run_siirl, run_siirl_killing_a_rank, summary
from tests.e2e.test_resume import SHORT, assert_same_run

pytestmark = pytest.mark.slow


def test_stopped_run_resumes_from_s3(tmp_path, cache_dir, s3_server, uninterrupted):
    uri, ep = "s3://siirl/runs/e2e", s3_server["endpoint"]
    common = ["train", f"run_name=s3-{tmp_path.name}", f"storage.uri={uri}", f"storage.endpoint_url={ep}",
              f"storage.cache_dir={cache_dir}", *SHORT]
    run_dir = summary_dir = os.path.join("runs", f"s3-{tmp_path.name}")
    try:
        crashed, victim = run_siirl_killing_a_rank(common + ["trainer.retries=0"], run_dir, after_step=5)
        assert crashed.returncode != 0
        assert f"pid {victim})" in crashed.stdout, crashed.stdout[-3000:]
        saved = [s for s, _ in ckpt.complete_checkpoints(uri, ep)]
        assert saved == [2, 4], saved  # killed after step 5, before step 6's save
        manifest = ckpt.verify(ckpt.step_dir(uri, 4), ep)
        assert manifest["step"] == 4 and "policy/model.safetensors" in manifest["files"]
        refused = _refused_manifests_stop_the_resume(common, uri, s3_server["faults"], run_dir, saved)
        corrupted = _corrupt_one_byte(ckpt.step_dir(uri, 4), ep, manifest)
        resumed_proc = run_siirl(common)
        # Sizes still match, so step 4 is listed as complete; its download fails the
        # checksum and the run resumes from step 2 instead, with the same results.
        said = resumed_proc.stdout + resumed_proc.stderr
        assert f"skipping checkpoint {ckpt.step_dir(uri, 4)}" in said, said[-3000:]
        assert f"{corrupted} does not match its checksum" in said, said[-3000:]
        s = summary(summary_dir)
        assert s["resumed_from_step"] == 2 and s["checkpoints"] == f"{uri}/checkpoints"
        assert_same_run(uninterrupted, metrics_by_step(run_dir))
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


def _corrupt_one_byte(folder: str, endpoint: str, manifest: dict) -> str:
    """Flip one byte of the engine's state (weights and optimizer) in place on the storage,
    as bit rot or a torn write would (the size stays the same); the file's name in the
    checkpoint."""
    import s3fs

    rel = "engine/state/mp_rank_00_model_states.pt"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
    path = folder.removeprefix("s3://") + "/" + rel
    data = bytearray(fs.cat_file(path))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file(path, bytes(data))
    assert fs.info(path)["size"] == manifest["files"][rel]["size"]
    return rel


def _refused_manifests_stop_the_resume(common: list[str], uri: str, faults, run_dir: str, saved: list[int]):
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
    assert [s for s, _ in ckpt.complete_checkpoints(uri, faults.endpoint)] == saved
    return proc
