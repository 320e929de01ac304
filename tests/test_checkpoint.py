"""Manifests: incomplete or corrupted checkpoints are skipped, never loaded."""
import json
import os

import pytest

from siirl_core import checkpoint as ckpt


def _fake_checkpoint(run_dir, step, complete=True):
    folder = ckpt.step_dir(str(run_dir), step)
    os.makedirs(os.path.join(folder, "engine"))
    with open(os.path.join(folder, "engine", "weights.bin"), "wb") as f:
        f.write(os.urandom(64))
    with open(os.path.join(folder, "state.json"), "w") as f:
        json.dump({"step": step}, f)
    if complete:
        ckpt.write_manifest(folder, step, 1, ckpt.local_files(folder), {"a": 1}, {"reward/mean": 0.5}, "test")
    return folder


def test_resume_picks_newest_complete(tmp_path):
    for step in (2, 4):
        _fake_checkpoint(tmp_path, step)
    _fake_checkpoint(tmp_path, 6, complete=False)  # killed mid-save: no manifest
    assert ckpt.find_resume_point(str(tmp_path), "auto")[0] == 4
    assert ckpt.find_resume_point(str(tmp_path), "2")[0] == 2
    assert ckpt.find_resume_point(str(tmp_path), "never") is None


def test_missing_file_or_bad_checksum_is_skipped(tmp_path, caplog):
    _fake_checkpoint(tmp_path, 2)
    f4 = _fake_checkpoint(tmp_path, 4)
    f6 = _fake_checkpoint(tmp_path, 6)
    os.remove(os.path.join(f6, "state.json"))
    with open(os.path.join(f4, "engine", "weights.bin"), "r+b") as f:
        f.write(b"\0\0\0\0")  # same size, different bytes
    with caplog.at_level("WARNING"):
        assert ckpt.find_resume_point(str(tmp_path), "auto")[0] == 2
    assert "missing file state.json" in caplog.text
    assert "does not match its checksum" in caplog.text


def test_manifest_records_files_and_metadata(tmp_path):
    folder = _fake_checkpoint(tmp_path, 3)
    manifest = ckpt.verify(folder)
    assert manifest["step"] == 3 and manifest["world_size"] == 1
    assert set(manifest["files"]) == {"engine/weights.bin", "state.json"}
    assert manifest["files"]["engine/weights.bin"]["size"] == 64


def test_resume_to_unknown_step_names_the_choices(tmp_path):
    _fake_checkpoint(tmp_path, 2)
    with pytest.raises(FileNotFoundError, match=r"complete steps: \[2\]"):
        ckpt.find_resume_point(str(tmp_path), "5")


def test_retention_keeps_the_newest(tmp_path):
    for step in (1, 2, 3, 4):
        _fake_checkpoint(tmp_path, step)
    ckpt.apply_retention(str(tmp_path), keep_last=2)
    assert [s for s, _ in ckpt.complete_checkpoints(str(tmp_path))] == [3, 4]


def test_a_checkpoint_of_another_world_size_is_refused_naming_both(tmp_path):
    folder = _fake_checkpoint(tmp_path, 2)
    ckpt.check_world_size(folder, 1)
    with pytest.raises(ValueError, match=r"was written by 1 ranks; this run has cluster.n_workers=2 .*set "
                                         r"cluster.n_workers=1, or trainer.resume=never"):
        ckpt.check_world_size(folder, 2)


def test_staging_folders_of_dead_processes_are_removed(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a pid that has exited
    for name in (f"siirl-save-4-r0-p{dead}-abc", f"siirl-restore-2-r1-p{dead}-def",
                 f"siirl-save-4-r0-p{os.getpid()}-ghi", "siirl-save-unrelated"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "engine.pt").write_bytes(b"x")
    removed = ckpt.remove_stale_staging(str(tmp_path))
    assert sorted(removed) == [f"siirl-restore-2-r1-p{dead}-def", f"siirl-save-4-r0-p{dead}-abc"]
    assert sorted(os.listdir(tmp_path)) == [f"siirl-save-4-r0-p{os.getpid()}-ghi", "siirl-save-unrelated"]
    mine = ckpt.staging_dir("save", 6, 0)
    try:
        assert os.path.basename(mine).startswith(f"siirl-save-6-r0-p{os.getpid()}-")
    finally:
        os.rmdir(mine)


def test_resume_candidates_newest_first_within_bounds(tmp_path):
    root = str(tmp_path)
    f2, f4 = _fake_checkpoint(tmp_path, 2), _fake_checkpoint(tmp_path, 4)
    _fake_checkpoint(tmp_path, 6, complete=False)
    assert ckpt.resume_candidates(root, "auto") == [(4, f4), (2, f2)]
    assert ckpt.resume_candidates(root, "auto", upto=3) == [(2, f2)]
    assert ckpt.resume_candidates(root, "2") == [(2, f2)]
    assert ckpt.resume_candidates(root, f4) == [(4, f4)]
    assert ckpt.resume_candidates(root, "never") == []
    assert ckpt.resume_candidates(str(tmp_path / "empty"), "auto", world_size=2) == []
    with pytest.raises(ValueError, match="was written by 1 ranks; this run has cluster.n_workers=2"):
        ckpt.resume_candidates(root, "auto", world_size=2)


def test_a_failed_upload_removes_what_it_wrote_and_nothing_else(tmp_path):
    from siirl_core.storage import StorageError

    staging = tmp_path / "staging"
    for rel in ("engine/a.bin", "engine/b.bin", "policy/model.safetensors", "state.json"):
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        (staging / rel).write_bytes(os.urandom(32))
    folder = ckpt.step_dir(str(tmp_path / "run"), 4)
    # Someone's folder where policy/model.safetensors must go: that file's copy fails.
    os.makedirs(os.path.join(folder, "policy", "model.safetensors"))
    open(os.path.join(folder, "policy", "model.safetensors", "theirs.txt"), "w").close()
    with pytest.raises(StorageError, match=r"upload policy/model.safetensors to .*step_00000004 failed after 2"):
        ckpt.upload_folder(str(staging), folder, attempts=2, backoff_s=0.0)
    left = sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)
    assert left == ["policy/model.safetensors/theirs.txt"]
    assert not os.path.exists(os.path.join(folder, "engine"))  # emptied, so removed


def test_recovery_restores_the_newest_checkpoint_up_to_the_failed_step(tmp_path):
    root = str(tmp_path / "run")
    for step in (2, 4, 6):
        _fake_checkpoint(root, step)
    assert [s for s, _ in ckpt.recovery_candidates(root, "auto", 5)] == [4, 2]
    assert [s for s, _ in ckpt.recovery_candidates(root, "auto", 6)] == [6, 4, 2]
    assert ckpt.recovery_candidates(root, "auto", 1) == []  # replays from the start


def test_recovery_before_the_first_save_returns_to_where_the_run_started(tmp_path):
    origin = _fake_checkpoint(tmp_path / "earlier", 8)
    root = str(tmp_path / "run")
    assert ckpt.recovery_candidates(root, origin, 9) == [(8, origin)]
    assert ckpt.recovery_candidates(root, "never", 9) == []
    _fake_checkpoint(root, 10)  # once this run saved, its own checkpoints come first
    assert [s for s, _ in ckpt.recovery_candidates(root, origin, 12)] == [10]
