"""bench/same_metrics.py tells equal runs from different ones, timings aside."""
import json

from bench.same_metrics import differences


def _run(folder, rows):
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(folder)


def test_equal_runs_and_a_changed_value(tmp_path):
    a = _run(tmp_path / "a", [{"step": 1, "reward/mean": 0.5, "timing_s/update": 1.0, "perf/tokens_per_s": 9}])
    b = _run(tmp_path / "b", [{"step": 1, "reward/mean": 0.5, "timing_s/update": 3.0, "perf/tokens_per_s": 1}])
    c = _run(tmp_path / "c", [{"step": 1, "reward/mean": 0.5001}, {"step": 2, "reward/mean": 0.6}])
    assert differences(a, b) == (2, [])
    assert differences(a, c) == (2, ["1 steps against 2", "step 1 reward/mean: 0.5 against 0.5001"])
