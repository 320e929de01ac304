"""verl-schema data files and a user reward function through the CLI: a jsonl file and
a parquet file learn, with per-source validation, and a malformed row stops the run
before anything starts, naming the file, the row and the field."""
import json
import os

import pytest

from tests.data_files import arithmetic_rows, write_jsonl
from tests.e2e.helpers import metrics_by_step, run_siirl
from tests.e2e.learning_cases import CASES

pytestmark = pytest.mark.slow


def test_jsonl_and_parquet_learn_with_a_user_reward(tmp_path, cache_dir):
    """A user's files and reward function (tests/e2e/learning_cases.py writes them): the
    warm start trains on the files' ground truth, then GRPO raises held-out accuracy."""
    run_dir, case = str(tmp_path / "run"), CASES["data_files"]
    run_siirl(case.command(run_dir, cache_dir))
    case.check(run_dir)
    m = metrics_by_step(run_dir)
    last = case.iterations
    assert sorted(m) == list(range(1, last + 1))
    for step in m.values():  # the user's reward (twice exact match), not the built-in one
        assert step["reward/mean"] == pytest.approx(2 * step["reward/accuracy"])
    assert m[last]["reward/accuracy"] > 0
    for source in ("arith_jsonl", "arith_parquet"):  # validation per data source
        for name in ("mean@4", "best@4", "maj@4", "pass@1", "pass@4"):
            assert 0 <= m[last][f"val/{source}/{name}"] <= 1
        assert m[last][f"val/{source}/best@4"] == pytest.approx(m[last][f"val/{source}/pass@4"])
    assert os.path.exists(os.path.join(run_dir, "checkpoints", f"step_{last:08d}", "manifest.json"))
    with open(os.path.join(run_dir, "config.json")) as f:
        assert json.load(f)["task"]["train_files"] == [os.path.join(run_dir + ".inputs", name)
                                                      for name in ("train.jsonl", "train.parquet")]


def test_malformed_row_stops_before_anything_starts(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", arithmetic_rows(3, "s") + [{"prompt": "1+1=", "reward_model": {}}])
    proc = run_siirl(["train", "task=file", f"task.train_files=[{bad}]", f"storage.uri={tmp_path / 'run'}"],
                     check=False, timeout=120)
    assert proc.returncode == 2
    assert "bad.jsonl: line 4: field 'reward_model.ground_truth' is missing" in proc.stderr
    assert not os.path.exists(tmp_path / "run")
