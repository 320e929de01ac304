"""PPO with a critic and DAPO learn: held-out accuracy on arithmetic rises by the margins
in tests/e2e/learning_cases.py (measured over seeds in docs/learning.md) from the same
warm start as the default run, in a CI budget."""
import pytest

from tests.e2e.helpers import metrics_by_step, run_siirl
from tests.e2e.learning_cases import CASES

pytestmark = pytest.mark.slow

# PPO also crashes once after step 15 and is retried from its step-10 checkpoint, so the
# critic's engine state is saved and restored on the way.
EXTRA = {"ppo": ["trainer.fail_at_step=15"], "dapo": []}


@pytest.mark.parametrize("algorithm", ["ppo", "dapo"])
def test_algorithm_raises_heldout_accuracy(tmp_path, cache_dir, algorithm):
    run_dir, case = str(tmp_path / algorithm), CASES[algorithm]
    proc = run_siirl(case.command(run_dir, cache_dir) + EXTRA[algorithm])
    case.check(run_dir)
    last = metrics_by_step(run_dir)[case.iterations]
    if algorithm == "ppo":
        assert last["critic/vf_loss"] > 0 and "critic/values_mean" in last
        assert "restored every rank from checkpoint step 10" in proc.stdout + proc.stderr
        assert sorted(metrics_by_step(run_dir)) == list(range(1, case.iterations + 1))
    else:
        assert last["dapo/batch_filled"] in (0.0, 1.0) and 0 < last["dapo/kept_group_frac"] <= 1
