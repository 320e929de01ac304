"""Checkpoints: one folder per step, a manifest written last.

A folder without a valid manifest, or whose files do not match it (size and
sha256), is incomplete: it is skipped with a log line and never loaded. So a
run killed mid-save leaves the earlier checkpoints as they were.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from typing import Optional

log = logging.getLogger("siirl.checkpoint")
MANIFEST = "manifest.json"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def step_dir(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, "checkpoints", f"step_{step:08d}")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: str, step: int, world_size: int, config: dict, metrics: dict, code_version: str) -> str:
    files = {}
    for root, _, names in os.walk(folder):
        for name in sorted(names):
            full = os.path.join(root, name)
            rel = os.path.relpath(full, folder)
            if rel == MANIFEST:
                continue
            files[rel] = {"size": os.path.getsize(full), "sha256": _sha256(full)}
    manifest = {"step": step, "world_size": world_size, "files": files, "config": config,
                "metrics": metrics, "code_version": code_version}
    tmp = os.path.join(folder, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(folder, MANIFEST))  # atomic on a local filesystem
    return os.path.join(folder, MANIFEST)


def verify(folder: str) -> Optional[dict]:
    """The manifest if the checkpoint is complete, else None (with a log line saying why)."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.exists(path):
        log.warning("skipping checkpoint %s: no manifest (incomplete save)", folder)
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as err:
        log.warning("skipping checkpoint %s: unreadable manifest (%s)", folder, err)
        return None
    for rel, meta in manifest["files"].items():
        full = os.path.join(folder, rel)
        if not os.path.exists(full):
            log.warning("skipping checkpoint %s: missing file %s", folder, rel)
            return None
        if os.path.getsize(full) != meta["size"] or _sha256(full) != meta["sha256"]:
            log.warning("skipping checkpoint %s: %s does not match its checksum", folder, rel)
            return None
    return manifest


def complete_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """(step, folder) of every complete checkpoint, oldest first."""
    root = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    found = []
    for name in sorted(os.listdir(root)):
        m = _STEP_DIR.match(name)
        if m and verify(os.path.join(root, name)) is not None:
            found.append((int(m.group(1)), os.path.join(root, name)))
    return found


def find_resume_point(run_dir: str, resume: str) -> Optional[tuple[int, str]]:
    """resume: 'never', 'auto' (newest complete) or a step number."""
    if resume == "never":
        return None
    complete = complete_checkpoints(run_dir)
    if resume == "auto":
        return complete[-1] if complete else None
    wanted = int(resume)
    for step, folder in complete:
        if step == wanted:
            return step, folder
    raise FileNotFoundError(
        f"trainer.resume={resume}: no complete checkpoint for step {wanted} in {run_dir}; "
        f"complete steps: {[s for s, _ in complete]}")


def apply_retention(run_dir: str, keep_last: int) -> None:
    if keep_last <= 0:
        return
    complete = complete_checkpoints(run_dir)
    for _, folder in complete[:-keep_last]:
        shutil.rmtree(folder, ignore_errors=True)
