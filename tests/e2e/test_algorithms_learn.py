"""PPO with a critic and DAPO learn: held-out accuracy on arithmetic rises by the margins
in tests/e2e/learning_cases.py (measured over seeds in docs/learning.md) from the same
warm start as the default run, in a CI budget."""
import re

import pytest

from tests.e2e.helpers import metrics_by_step, run_siirl, run_siirl_killing_a_rank
from tests.e2e.learning_cases import CASES

pytestmark = pytest.mark.slow

@pytest.mark.parametrize("algorithm", ["ppo", "dapo"])
def test_algorithm_raises_heldout_accuracy(tmp_path, cache_dir, algorithm):
    run_dir, case = str(tmp_path / algorithm), CASES[algorithm]
    if algorithm == "ppo":
        # A rank killed after step 15: the iteration is retried from the newest checkpoint
        # (every 10 steps), so the critic's engine state is saved and restored on the way.
        proc, _ = run_siirl_killing_a_rank(case.command(run_dir, cache_dir), run_dir, after_step=15)
        assert proc.returncode == 0, proc.stdout[-5000:]
    else:
        run_siirl(case.command(run_dir, cache_dir))
    case.check(run_dir)
    last = metrics_by_step(run_dir)[case.iterations]
    if algorithm == "ppo":
        assert last["critic/vf_loss"] > 0 and "critic/values_mean" in last
        restored = re.search(r"restored every rank from checkpoint step (\d+)", proc.stdout)
        assert restored and int(restored.group(1)) in (10, 20), proc.stdout[-5000:]
        assert sorted(metrics_by_step(run_dir)) == list(range(1, case.iterations + 1))
    else:
        assert last["dapo/batch_filled"] in (0.0, 1.0) and 0 < last["dapo/kept_group_frac"] <= 1
