"""verl-schema data files and a user reward function through the CLI: a jsonl file and
a parquet file train for two iterations with per-source validation, and a malformed
row stops the run before anything starts, naming the file, the row and the field."""
import json
import os
import textwrap

import pytest

from tests.data_files import arithmetic_rows, write_jsonl, write_parquet
from tests.e2e.helpers import metrics_by_step, run_siirl, summary

pytestmark = pytest.mark.slow


def test_jsonl_and_parquet_train_with_a_user_reward(tmp_path, cache_dir):
    train = [write_jsonl(tmp_path / "train.jsonl", arithmetic_rows(300, "arith_jsonl")),
             write_parquet(tmp_path / "train.parquet", arithmetic_rows(300, "arith_parquet", chat=True, start=500))]
    reward = tmp_path / "my_reward.py"
    reward.write_text(textwrap.dedent("""
        def always_one(data_source, solution_str, ground_truth, extra_info):
            # Scores every sample 1 but calls none correct: visible in reward/mean vs reward/accuracy.
            assert data_source in ("arith_jsonl", "arith_parquet") and "id" in extra_info
            return {"score": 1.0, "acc": solution_str.strip() == ground_truth}
    """))
    run_dir = str(tmp_path / "run")
    run_siirl(["train", "task=file", f"task.train_files=[{train[0]},{train[1]}]", f"storage.uri={run_dir}",
               f"storage.cache_dir={cache_dir}", f"reward.function={reward}:always_one", "model=tiny", "trainer.steps=2",
               "trainer.prompts_per_step=8", "trainer.save_every=2", "trainer.eval_every=2", "sft.steps=100",
               "evaluate.during_training=true", "evaluate.n=4", "evaluate.pass_k=[1,4]"])
    m = metrics_by_step(run_dir)
    assert sorted(m) == [1, 2]
    assert m[2]["reward/mean"] == 1.0 and m[2]["reward/accuracy"] < 1.0
    for source in ("arith_jsonl", "arith_parquet"):  # validation per data source
        for name in ("mean@4", "best@4", "maj@4", "pass@1", "pass@4"):
            assert 0 <= m[2][f"val/{source}/{name}"] <= 1
        assert m[2][f"val/{source}/best@4"] == pytest.approx(m[2][f"val/{source}/pass@4"])
    assert summary(run_dir)["steps"] == 2
    assert os.path.exists(os.path.join(run_dir, "checkpoints", "step_00000002", "manifest.json"))
    with open(os.path.join(run_dir, "config.json")) as f:
        assert json.load(f)["task"]["train_files"] == train


def test_malformed_row_stops_before_anything_starts(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", arithmetic_rows(3, "s") + [{"prompt": "1+1=", "reward_model": {}}])
    proc = run_siirl(["train", "task=file", f"task.train_files=[{bad}]", f"storage.uri={tmp_path / 'run'}"],
                     check=False, timeout=120)
    assert proc.returncode == 2
    assert "bad.jsonl: row 3: field 'reward_model.ground_truth' is missing" in proc.stderr
    assert not os.path.exists(tmp_path / "run")
