"""PPO with a critic and DAPO learn: held-out accuracy on arithmetic rises by a stated
margin from the same warm start as the default run (28.0% here), in a CI budget.

Measured on 2 CPU cores (`trainer.eval_every=20`, 60 iterations): PPO 28.0% -> 42.6%
after 20 iterations, 45.0% after 40, 48.4% after 60; DAPO 28.0% -> 45.4%, 47.0%, 43.6%
(every step filled its batch of groups with differing rewards within 2 rounds)."""
import pytest

from tests.e2e.helpers import metrics_by_step, run_siirl, summary

pytestmark = pytest.mark.slow
ITERATIONS = 30
# Stated margins, below what was measured so that seeds and platforms have room.
MARGINS = {"ppo": 0.10, "dapo": 0.10}


# PPO also crashes once after step 15 and is retried from its step-10 checkpoint, so the
# critic's engine state is saved and restored on the way.
EXTRA = {"ppo": ["trainer.save_every=10", "trainer.fail_at_step=15"], "dapo": ["trainer.save_every=0"]}


@pytest.mark.parametrize("algorithm", ["ppo", "dapo"])
def test_algorithm_raises_heldout_accuracy(tmp_path, cache_dir, algorithm):
    run_dir = str(tmp_path / algorithm)
    proc = run_siirl(["train", f"algorithm={algorithm}", f"storage.uri={run_dir}", f"storage.cache_dir={cache_dir}",
                      f"trainer.steps={ITERATIONS}", f"trainer.eval_every={ITERATIONS}", *EXTRA[algorithm]])
    s = summary(run_dir)
    gain = s["val_accuracy_after"] - s["val_accuracy_before"]
    assert gain >= MARGINS[algorithm], f"{algorithm}: {s['val_accuracy_before']:.3f} -> {s['val_accuracy_after']:.3f}"
    last = metrics_by_step(run_dir)[ITERATIONS]
    if algorithm == "ppo":
        assert last["critic/vf_loss"] > 0 and "critic/values_mean" in last
        assert "restored every rank from checkpoint step 10" in proc.stdout + proc.stderr
        assert sorted(metrics_by_step(run_dir)) == list(range(1, ITERATIONS + 1))
    else:
        assert last["dapo/batch_filled"] in (0.0, 1.0) and 0 < last["dapo/kept_group_frac"] <= 1
