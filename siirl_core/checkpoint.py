"""Checkpoints: one folder per step under `<storage>/checkpoints/`, a manifest written last.

Each rank stages its own files on local disk, uploads them, and reports their sizes
and sha256; rank 0 then writes `manifest.json` (step, world size, every file, the
resolved config, the code version, the metrics). A folder without a valid manifest,
or whose files do not match it, is incomplete: it is skipped with a log line and
never loaded. So a run killed mid-save, or a storage outage, leaves the earlier
checkpoints as they were. A folder the storage cannot read (errors after retries) is
neither: it stops the run with StorageError instead of being skipped.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import tempfile
from typing import Optional

from siirl_core.storage import StorageError, filesystem, is_remote, join, retrying, write_whole

log = logging.getLogger("siirl.checkpoint")
MANIFEST = "manifest.json"
_STEP_DIR = re.compile(r"step_(\d{8})$")


class ChecksumError(ValueError):
    """A checkpoint file does not match its manifest."""


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written; the earlier ones are intact."""


_STAGING = re.compile(r"siirl-(?:save|restore)-\d+-r\d+-p(\d+)-")


def staging_dir(kind: str, step: int, rank: int) -> str:
    """A fresh local folder for a save or restore; its name holds this process's pid, so a
    later process can tell when its owner was killed before cleaning up."""
    return tempfile.mkdtemp(prefix=f"siirl-{kind}-{step}-r{rank}-p{os.getpid()}-")


def remove_stale_staging(tmp_dir: str | None = None) -> list[str]:
    """Delete the staging folders of processes that no longer run (killed mid-save or
    mid-restore); returns what was deleted."""
    tmp_dir = tmp_dir or tempfile.gettempdir()
    removed = []
    for name in os.listdir(tmp_dir):
        m = _STAGING.match(name)
        if m and not _process_alive(int(m.group(1))):
            shutil.rmtree(os.path.join(tmp_dir, name), ignore_errors=True)
            removed.append(name)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def space_shortage(paths: list[str], needed_bytes: int) -> str:
    """"" when each disk holding one of `paths` (or its nearest existing parent) has
    needed_bytes free for each of those paths on it, else a sentence saying what is
    needed, what is free, and where."""
    need_by_disk: dict[int, list] = {}
    for path in paths:
        probe = os.path.abspath(path)
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        need_by_disk.setdefault(os.stat(probe).st_dev, [probe, 0])[1] += needed_bytes
    for probe, need in need_by_disk.values():
        free = shutil.disk_usage(probe).free
        if free < need:
            return (f"about {need / 2**20:.1f} MiB needed, {free / 2**20:.1f} MiB free on the disk of {probe}: free "
                    "space there, lower trainer.keep_checkpoints, or move storage.uri")
    return ""


def step_dir(root_uri: str, step: int) -> str:
    return join(root_uri, "checkpoints", f"step_{step:08d}")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def local_files(folder: str) -> dict[str, dict]:
    """rel path -> {size, sha256} for every file under a local folder."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in sorted(names):
            full = os.path.join(root, name)
            out[os.path.relpath(full, folder)] = {"size": os.path.getsize(full), "sha256": sha256_file(full)}
    return out


def upload_folder(local_dir: str, folder_uri: str, endpoint_url: str = "", attempts: int = 3,
                  on_uploaded=None, backoff_s: float = 0.5) -> dict[str, dict]:
    """Copy a local folder's files into folder_uri; returns their manifest entries.
    on_uploaded(rel) is called after each file (progress reporting). When a file fails,
    the ones already copied are removed again (best effort) before the error propagates:
    a failed save leaves no partial folder to fill a disk or confuse an operator."""
    files = local_files(local_dir)
    fs, root = filesystem(folder_uri, endpoint_url)
    tried: list[str] = []
    try:
        for rel in files:
            target = posixpath.join(root, rel)
            tried.append(target)
            if not is_remote(folder_uri):
                os.makedirs(os.path.dirname(target), exist_ok=True)
            retrying(f"upload {rel} to {folder_uri}", lambda: fs.put_file(os.path.join(local_dir, rel), target),
                     attempts, backoff_s)
            if on_uploaded is not None:
                on_uploaded(rel)
    except BaseException:
        _remove_partial_upload(fs, root, tried[:-1], tried, is_remote(folder_uri))
        raise
    return files


def _remove_partial_upload(fs, root: str, uploaded: list[str], tried: list[str], remote: bool) -> None:
    """Delete the files a failed upload wrote and, on a local disk, the folders it left
    empty. What was there before (a non-empty folder, another file) is not touched."""
    for target in uploaded:
        try:
            fs.rm_file(target)
        except Exception as err:  # the storage may be what failed: the folder has no manifest either way
            log.warning("could not remove %s after a failed save (%s: %s); without a manifest it is never "
                        "loaded", target, type(err).__name__, err)
    if remote:
        return
    for folder in sorted({os.path.dirname(t) for t in tried}, key=len, reverse=True):
        while folder.startswith(root) and os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)
            if folder == root:
                break
            folder = os.path.dirname(folder)


def write_manifest(folder_uri: str, step: int, world_size: int, files: dict, config: dict, metrics: dict,
                   code_version: str, endpoint_url: str = "", attempts: int = 3, backoff_s: float = 0.5) -> None:
    manifest = {"step": step, "world_size": world_size, "files": files, "config": config,
                "metrics": metrics, "code_version": code_version}
    write_whole(folder_uri, MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode(), endpoint_url, attempts,
                backoff_s)


def read_manifest(folder_uri: str, endpoint_url: str = "") -> Optional[dict]:
    """The folder's manifest, or None when it has none or it is not valid JSON (an incomplete
    or damaged save: skipped with a log line). A manifest the storage fails to return (an
    expired token, throttling, a timeout) raises StorageError: an unreadable checkpoint is
    not an incomplete one, and skipping it would start a run over."""
    fs, root = filesystem(folder_uri, endpoint_url)
    path = posixpath.join(root, MANIFEST)
    try:
        return json.loads(retrying(f"read {folder_uri}/{MANIFEST}", lambda: fs.cat_file(path)))
    except (FileNotFoundError, NotADirectoryError):
        log.warning("skipping checkpoint %s: no manifest (incomplete save)", folder_uri)
    except ValueError as err:
        log.warning("skipping checkpoint %s: damaged manifest (%s)", folder_uri, err)
    except StorageError as err:
        raise StorageError(f"checkpoint {folder_uri}: cannot tell whether it is complete: {err}. The run "
                           f"stops rather than start without it; rerun when the storage answers "
                           f"(trainer.resume=never starts over on purpose)") from err
    return None


def verify(folder_uri: str, endpoint_url: str = "") -> Optional[dict]:
    """The manifest if the checkpoint is complete, else None (with a log line saying why).
    Sizes are checked everywhere; sha256 here for local folders and on download for remote ones.
    Storage errors raise StorageError (see read_manifest)."""
    manifest = read_manifest(folder_uri, endpoint_url)
    if manifest is None:
        return None
    fs, root = filesystem(folder_uri, endpoint_url)
    remote = is_remote(folder_uri)
    for rel, meta in manifest["files"].items():
        path = posixpath.join(root, rel)
        try:
            size = retrying(f"stat {folder_uri}/{rel}", lambda: fs.info(path))["size"]
        except FileNotFoundError:
            log.warning("skipping checkpoint %s: missing file %s", folder_uri, rel)
            return None
        if size != meta["size"] or (not remote and sha256_file(path) != meta["sha256"]):
            log.warning("skipping checkpoint %s: %s does not match its checksum", folder_uri, rel)
            return None
    return manifest


def world_size_error(manifest: dict, folder_uri: str, world_size: int) -> str:
    """Why a checkpoint cannot load into `world_size` ranks ("" when it can): it loads only
    into as many ranks as wrote it (no resharding yet)."""
    if manifest["world_size"] == world_size:
        return ""
    return (f"checkpoint {folder_uri} was written by {manifest['world_size']} ranks; this run has "
            f"cluster.n_workers={world_size} (resharding is not supported yet): set "
            f"cluster.n_workers={manifest['world_size']}, or trainer.resume=never to start over")


def check_world_size(folder_uri: str, world_size: int, endpoint_url: str = "") -> None:
    manifest = read_manifest(folder_uri, endpoint_url)
    error = world_size_error(manifest, folder_uri, world_size) if manifest is not None else ""
    if error:
        raise ValueError(error)


def download(folder_uri: str, manifest: dict, local_dir: str, wanted=lambda rel: True,
             endpoint_url: str = "") -> None:
    """Fetch the wanted files and check each against the manifest's sha256."""
    fs, root = filesystem(folder_uri, endpoint_url)
    for rel, meta in manifest["files"].items():
        if not wanted(rel):
            continue
        src = posixpath.join(root, rel)
        dst = os.path.join(local_dir, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        retrying(f"download {rel} from {folder_uri}", lambda: fs.get_file(src, dst))
        if sha256_file(dst) != meta["sha256"]:
            raise ChecksumError(f"checkpoint {folder_uri}: {rel} does not match its checksum")


def step_folders(root_uri: str, endpoint_url: str = "") -> list[tuple[int, str]]:
    """(step, folder URI) of every step_N folder under checkpoints/, oldest first, complete
    or not (one listing, nothing verified)."""
    fs, root = filesystem(root_uri, endpoint_url)
    base = join(root_uri, "checkpoints")
    path = posixpath.join(root, "checkpoints")
    try:
        names = retrying(f"list {base}", lambda: fs.ls(path, detail=False))
    except FileNotFoundError:
        return []
    found = []
    for name in sorted(n.rstrip("/").rsplit("/", 1)[-1] for n in names):
        m = _STEP_DIR.match(name)
        if m:
            found.append((int(m.group(1)), join(base, name)))
    return found


def complete_checkpoints(root_uri: str, endpoint_url: str = "") -> list[tuple[int, str]]:
    """(step, folder URI) of every complete checkpoint, oldest first."""
    return [(step, folder) for step, folder in step_folders(root_uri, endpoint_url)
            if verify(folder, endpoint_url) is not None]


def find_resume_point(root_uri: str, resume: str, endpoint_url: str = "") -> Optional[tuple[int, str]]:
    """resume: 'never', 'auto' (newest complete), a step number, or a checkpoint folder URI."""
    if resume == "never":
        return None
    if not resume.isdigit() and resume != "auto":
        manifest = verify(resume, endpoint_url)
        if manifest is None:
            raise FileNotFoundError(f"trainer.resume={resume}: not a complete checkpoint folder (see the log)")
        return manifest["step"], resume
    complete = complete_checkpoints(root_uri, endpoint_url)
    if resume == "auto":
        return complete[-1] if complete else None
    for step, folder in complete:
        if step == int(resume):
            return step, folder
    raise FileNotFoundError(
        f"trainer.resume={resume}: no complete checkpoint for step {resume} in {root_uri}; "
        f"complete steps: {[s for s, _ in complete]}")


def resume_candidates(root_uri: str, resume: str, endpoint_url: str = "", upto: int | None = None,
                      world_size: int | None = None) -> list[tuple[int, str]]:
    """(step, folder) of the checkpoints a run may start from, best first: for 'auto' every
    complete one (at most step `upto`), newest first, so a checkpoint whose files fail their
    checksum on download can give way to the next; for a step or a folder, that one; for
    'never', none. The first must have been written by `world_size` ranks."""
    if resume == "auto":  # one listing (verifying is I/O)
        found = reversed(complete_checkpoints(root_uri, endpoint_url))
        candidates = [(s, f) for s, f in found if upto is None or s <= upto]
    else:
        point = find_resume_point(root_uri, resume, endpoint_url)
        candidates = [point] if point is not None else []
    if candidates and world_size is not None:
        check_world_size(candidates[0][1], world_size, endpoint_url)
    return candidates


def recovery_candidates(root_uri: str, resume: str, step: int, endpoint_url: str = "",
                        world_size: int | None = None) -> list[tuple[int, str]]:
    """Where ranks rebuilt after a failure at `step` restore from, best first: this run's
    complete checkpoints up to `step`; without any, where the run started (trainer.resume
    naming a step or folder), so the replay starts from the same weights; else none
    (replay from the start)."""
    candidates = resume_candidates(root_uri, "auto", endpoint_url, upto=step, world_size=world_size)
    if not candidates and resume not in ("auto", "never"):
        candidates = resume_candidates(root_uri, resume, endpoint_url, world_size=world_size)
    return candidates


def apply_retention(root_uri: str, keep_last: int, endpoint_url: str = "") -> None:
    """Delete complete checkpoints older than the newest keep_last, except any that has
    ever been promoted to champion."""
    from siirl_core.champion import is_promoted

    if keep_last <= 0:
        return
    for _, folder in complete_checkpoints(root_uri, endpoint_url)[:-keep_last]:
        if is_promoted(folder, endpoint_url):
            continue
        fs, path = filesystem(folder, endpoint_url)
        retrying(f"delete {folder}", lambda: fs.rm(path, recursive=True))
