"""bench/trl_compare.py's per-side summary: FLOPs and utilisation count the work each
iteration ran (fused or not, rows left out for zero advantages). Synthetic runs; not timed."""
import importlib.util
import os

import pytest

from tests.conftest import ROOT


def _trl_compare():
    spec = importlib.util.spec_from_file_location("trl_compare", os.path.join(ROOT, "bench", "trl_compare.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(seconds, fused, skipped):
    return {"iteration_s": seconds, "rollout_s": [s / 2 for s in seconds], "train_s": [s / 2 for s in seconds],
            "parameters": 1000, "fused": any(fused), "fused_iterations": fused,
            "zero_advantage_rows_skipped": skipped, "peak_rss_mib": 1.0, "final_reward": 0.0}


def test_training_work_counts_only_the_rows_the_update_ran():
    tc = _trl_compare()
    rows = tc.SPEC["prompts_per_step"] * tc.SPEC["n"]
    every = tc.summarise([_run([1.0, 1.0], [False, False], [0, 0])], 8.0, 1e9, [])
    half = tc.summarise([_run([1.0, 1.0], [False, False], [rows // 2, rows // 2])], 8.0, 1e9, [])
    assert half["rows_skipped_frac"] == pytest.approx(0.5) and every["rows_skipped_frac"] == 0
    assert half["train_mfu"] == pytest.approx(every["train_mfu"] / 2)
    assert half["train_tokens_per_s"] == pytest.approx(every["train_tokens_per_s"] / 2)
    assert half["rollout_mfu"] == pytest.approx(every["rollout_mfu"])
    gen = 2 * 1000 * rows * tc.SPEC["max_new_tokens"]
    assert half["iteration_mfu"] < every["iteration_mfu"] and half["iteration_mfu"] * 1e9 > gen
    # A fused iteration (every row through the rollout's graph) runs 6 x parameters per fed token.
    fused = tc.summarise([_run([1.0], [True], [0])], 8.0, 1e9, [])
    assert fused["rows_skipped_frac"] == 0 and fused["train_mfu"] is None
    assert fused["iteration_mfu"] == pytest.approx(tc.iteration_flops(1000, 8.0, True) / 1e9)
