"""Checkpoint storage on S3 for real (s3fs over HTTP to moto's server on loopback):
manifests, skipping incomplete checkpoints, an outage in the middle of a save, and
storage errors at resume."""
import os

import pytest

from siirl_core import checkpoint as ckpt
from siirl_core.storage import StorageError


def _stage(tmp_path, name: str, files: dict[str, bytes]) -> str:
    folder = tmp_path / name
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return str(folder)


def _save(tmp_path, root: str, endpoint: str, step: int, on_uploaded=None) -> str:
    local = _stage(tmp_path, f"stage{step}", {"engine/a.bin": os.urandom(1000), "engine/b.bin": os.urandom(500),
                                               "state.json": b'{"step": %d}' % step})
    folder = ckpt.step_dir(root, step)
    files = ckpt.upload_folder(local, folder, endpoint, on_uploaded=on_uploaded)
    ckpt.write_manifest(folder, step, 1, files, {}, {}, "test", endpoint)
    return folder


def test_s3_checkpoints_skip_incomplete_and_corrupt(tmp_path, s3_server):
    root, ep = "s3://siirl/unit", s3_server["endpoint"]
    _save(tmp_path, root, ep, 2)
    f4 = _save(tmp_path, root, ep, 4)
    f6 = _save(tmp_path, root, ep, 6)
    from siirl_core.storage import filesystem

    fs, path = filesystem(f6, ep)
    fs.rm_file(path + "/state.json")  # a lost file
    assert [s for s, _ in ckpt.complete_checkpoints(root, ep)] == [2, 4]
    # Same size, other bytes: caught by the sha256 check on download.
    fs4, path4 = filesystem(f4, ep)
    fs4.pipe_file(path4 + "/engine/b.bin", os.urandom(500))
    manifest = ckpt.verify(f4, ep)
    with pytest.raises(ckpt.ChecksumError, match="engine/b.bin does not match its checksum"):
        ckpt.download(f4, manifest, str(tmp_path / "dl4"), endpoint_url=ep)
    ckpt.download(ckpt.step_dir(root, 2), ckpt.verify(ckpt.step_dir(root, 2), ep), str(tmp_path / "dl2"),
                  endpoint_url=ep)
    assert (tmp_path / "dl2" / "state.json").read_bytes() == b'{"step": 2}'


def test_outage_mid_save_keeps_earlier_checkpoints(tmp_path, s3_server):
    root, ep = "s3://siirl/outage", s3_server["proxy_endpoint"]
    relay = s3_server["relay"]
    _save(tmp_path, root, ep, 2)

    def cut_storage(rel):  # the storage goes away after the first file of the next save
        relay.stop()

    try:
        with pytest.raises(StorageError, match=r"upload .* to s3://siirl/outage/checkpoints/step_00000004 "
                                               r"failed after 3 attempts"):
            _save(tmp_path, root, ep, 4, on_uploaded=cut_storage)
    finally:
        relay.start()
    # The half-written step 4 has no manifest: skipped; step 2 is complete and loadable.
    assert ckpt.find_resume_point(root, "auto", ep)[0] == 2
    ckpt.download(ckpt.step_dir(root, 2), ckpt.verify(ckpt.step_dir(root, 2), ep), str(tmp_path / "dl"),
                  endpoint_url=ep)
    assert (tmp_path / "dl" / "state.json").read_bytes() == b'{"step": 2}'


def test_storage_errors_at_resume_stop_instead_of_starting_over(tmp_path, s3_server):
    """Manifests the storage refuses to return (HTTP 403 after the listing succeeded, as an
    expired token looks) are not incomplete checkpoints: finding the resume point raises
    instead of answering "nothing to resume", and works again once the storage answers."""
    faults = s3_server["faults"]
    root, ep = "s3://siirl/denied", faults.endpoint
    _save(tmp_path, root, ep, 2)
    _save(tmp_path, root, ep, 4)
    faults.fail(r"/manifest\.json$", status=403)
    try:
        with pytest.raises(StorageError, match=r"checkpoint s3://siirl/denied/checkpoints/step_00000002: cannot "
                                               r"tell whether it is complete: read .*manifest.json failed after 3 "
                                               r"attempts.*rerun when the storage answers"):
            ckpt.find_resume_point(root, "auto", ep)
        assert faults.denied >= 3  # one refused read per attempt at least (s3fs may retry inside one)
        faults.fail(r"/step_00000004/engine/a\.bin$", status=503)  # a file's size, while verifying
        with pytest.raises(StorageError, match=r"stat s3://siirl/denied/checkpoints/step_00000004/engine/a.bin "
                                               r"failed after 3 attempts"):
            ckpt.find_resume_point(root, "auto", ep)
    finally:
        faults.heal()
    assert ckpt.find_resume_point(root, "auto", ep)[0] == 4


def test_retrying_waits_by_its_schedule(monkeypatch):
    import time as time_module

    from siirl_core.storage import retrying

    waited, calls = [], []
    monkeypatch.setattr(time_module, "sleep", waited.append)

    def flaky():
        calls.append(1)
        if len(calls) < 4:
            raise ConnectionError("reset by peer")
        return "ok"

    assert retrying("read x", flaky, attempts=6, backoff_s=1.0) == "ok"
    assert waited == [1.0, 2.0, 4.0] and len(calls) == 4
    with pytest.raises(StorageError, match=r"read x failed after 2 attempts: ConnectionError: reset by peer"):
        retrying("read x", lambda: (_ for _ in ()).throw(ConnectionError("reset by peer")), attempts=2)
    with pytest.raises(FileNotFoundError):  # not a fault: no retries
        retrying("read y", lambda: open("/nonexistent/siirl"), attempts=5)
    assert waited == [1.0, 2.0, 4.0, 0.5]
