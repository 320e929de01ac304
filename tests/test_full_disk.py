"""A checkpoint disk without room for the next save: the save is refused before anything is
written, naming the disk and the sizes, and the earlier checkpoint stays complete. On a real
small filesystem (a tmpfs; skipped where this user may not mount one)."""
import os
import shutil
import subprocess

import pytest

from siirl_core import checkpoint as ckpt


@pytest.fixture
def small_disk(tmp_path):
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_a_save_that_would_not_fit_is_refused_before_writing(rank_worker, small_disk):
    first = rank_worker.save(str(small_disk / "first"), {})
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(first) for f in files)
    ballast = small_disk / "ballast"
    with open(ballast, "wb") as f:  # leave room for half a checkpoint
        f.write(b"\0" * (shutil.disk_usage(small_disk).free - size // 2))
    second_root = str(small_disk / "second")
    with pytest.raises(ckpt.CheckpointSaveError, match=rf"checkpoint step {rank_worker.step} not started: rank 0: "
                                                       rf"about [\d.]+ MiB needed, [\d.]+ MiB free on the disk of "
                                                       rf"{small_disk}.*earlier checkpoints are untouched"):
        rank_worker.save(second_root, {})
    assert not os.path.exists(second_root)  # nothing written
    assert ckpt.verify(first) is not None  # the earlier checkpoint is complete
    ballast.unlink()
    assert ckpt.verify(rank_worker.save(second_root, {})) is not None  # with room, it saves
