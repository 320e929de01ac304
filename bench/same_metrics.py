"""Whether two runs logged the same numbers: every metric of every step in two run
folders' metrics.jsonl, timings and throughputs left out (they depend on the machine's
load). For refactorings that must not change behaviour, e.g. the same command run with
PYTHONPATH pointing at a worktree of the old and of the new commit:

    PYTHONPATH=/tmp/old siirl train trainer.steps=6 storage.uri=/tmp/run-old
    siirl train trainer.steps=6 storage.uri=/tmp/run-new
    python bench/same_metrics.py /tmp/run-old /tmp/run-new
"""
from __future__ import annotations

import json
import math
import os
import sys


def differences(a_dir: str, b_dir: str, tolerance: float = 1e-6) -> tuple[int, list[str]]:
    """(values compared, a line per value that differs by more than `tolerance`)."""
    def rows(d: str) -> list[dict]:
        with open(os.path.join(d, "metrics.jsonl")) as f:
            return [json.loads(line) for line in f if line.strip()]

    a, b = rows(a_dir), rows(b_dir)
    bad = [] if len(a) == len(b) else [f"{len(a)} steps against {len(b)}"]
    compared = 0
    for ra, rb in zip(a, b):
        for key, value in ra.items():
            if key.startswith(("timing_s/", "perf/")) or not isinstance(value, (int, float)):
                continue
            compared += 1
            other = rb.get(key)
            same = other is not None and (abs(value - other) <= tolerance
                                          or (math.isnan(value) and math.isnan(other)))
            if not same:
                bad.append(f"step {ra.get('step')} {key}: {value} against {other}")
    return compared, bad


def main() -> None:
    compared, bad = differences(sys.argv[1], sys.argv[2])
    print(f"{compared} values compared, {len(bad)} differ")
    for line in bad[:20]:
        print("  " + line)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
