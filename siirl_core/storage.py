"""Checkpoint storage through fsspec: a local folder or s3://bucket/prefix (s3fs),
with an optional endpoint for S3-compatible servers. Credentials come from the
standard AWS environment and config chain and never pass through our configs.

Every remote operation is retried with exponential backoff; what still fails raises
StorageError naming the operation and the URI."""
from __future__ import annotations

import logging
import os
import time
from typing import Callable, TypeVar

import fsspec
from fsspec.core import url_to_fs

log = logging.getLogger("siirl.storage")
T = TypeVar("T")


class StorageError(OSError):
    """A storage operation failed after its retries."""


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def join(uri: str, *parts: str) -> str:
    if not is_remote(uri):
        return os.path.join(uri, *parts)
    return "/".join([uri.rstrip("/"), *[p.strip("/") for p in parts]])


def filesystem(uri: str, endpoint_url: str = "") -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path within it) for a URI."""
    opts: dict = {}
    if uri.startswith("s3://"):
        # Fail fast inside one attempt; our own retries add the backoff.
        opts = {"config_kwargs": {"connect_timeout": 3, "read_timeout": 10, "retries": {"max_attempts": 2}}}
        if endpoint_url:
            opts["endpoint_url"] = endpoint_url
    fs, path = url_to_fs(uri, **opts)
    if is_remote(uri):
        fs.invalidate_cache()  # listings must see other processes' writes
    return fs, path


MAX_BACKOFF_S = 60.0


def backoff_schedule(attempts: int, backoff_s: float) -> list[float]:
    """Seconds to wait after each failed attempt but the last: backoff_s doubling, capped."""
    return [min(backoff_s * 2 ** i, MAX_BACKOFF_S) for i in range(attempts - 1)]


def retrying(what: str, fn: Callable[[], T], attempts: int = 3, backoff_s: float = 0.5) -> T:
    """fn() with retries on transient errors; a missing file (or a file where a folder of
    the path should be) is not transient."""
    waits = backoff_schedule(attempts, backoff_s)
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except (FileNotFoundError, NotADirectoryError):
            raise
        except Exception as err:  # botocore and aiohttp errors are not all OSError
            if attempt == attempts:
                raise StorageError(f"{what} failed after {attempts} attempts: {type(err).__name__}: {err}") from err
            log.warning("%s failed (%s: %s); retry %d/%d in %.1f s", what, type(err).__name__, err, attempt,
                        attempts - 1, waits[attempt - 1])
            time.sleep(waits[attempt - 1])
    raise AssertionError("unreachable")


def write_whole(folder_uri: str, name: str, data: bytes, endpoint_url: str = "", attempts: int = 3,
                backoff_s: float = 0.5) -> str:
    """Write a small file so that readers see all of it or none: a rename on a local
    disk, one PUT on S3 (an object appears whole or not at all). Returns its URI."""
    fs, folder = filesystem(folder_uri, endpoint_url)
    if not is_remote(folder_uri):
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(folder, name))
        return os.path.join(folder_uri, name)
    retrying(f"write {join(folder_uri, name)}", lambda: fs.pipe_file(join(folder, name), data), attempts, backoff_s)
    return join(folder_uri, name)
