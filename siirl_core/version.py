"""The code version recorded in checkpoint manifests."""
from __future__ import annotations

import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version


@lru_cache(maxsize=1)
def code_version() -> str:
    try:
        pkg = version("siirl-flow")
    except PackageNotFoundError:
        pkg = "unknown"
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=__file__.rsplit("/", 2)[0]).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{pkg}+{sha}" if sha else pkg
