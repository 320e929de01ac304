"""Shared by the benchmarks that run each side in its own process: run one side and read
the JSON line it prints last; write a result as OUT.json and OUT.md."""
from __future__ import annotations

import json
import subprocess


def run_side(cmd: list[str], cwd: str) -> dict:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=cwd).stdout
    return json.loads(out.strip().splitlines()[-1])


def write_result(out_prefix: str, result: dict, markdown: str) -> None:
    with open(out_prefix + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(out_prefix + ".md", "w") as f:
        f.write(markdown)
    print(markdown)
