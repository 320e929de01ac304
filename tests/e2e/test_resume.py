"""A run stopped after a checkpoint resumes with resume=auto, ends at the configured
step, and its first resumed iteration matches the uninterrupted run; a failed
iteration is retried from the newest checkpoint with a consistent log."""
import os

import pytest

from siirl_core import checkpoint as ckpt
from tests.e2e.helpers import metrics_by_step, run_siirl, summary

pytestmark = pytest.mark.slow
# Same seeds, same restored weights and optimizer state: the replay is bit-for-bit
# on one machine; the tolerance only absorbs float reduction-order noise.
TOL = 1e-5
COMPARED = ("reward/mean", "reward/accuracy", "response/length_mean", "actor/pg_loss", "actor/entropy",
            "actor/grad_norm", "actor/approx_kl")
# Not learning tests: the `tiny` model (0.43M parameters) keeps them short.
SHORT = ["model=tiny", "trainer.steps=6", "trainer.save_every=2", "trainer.eval_every=0",
         "trainer.prompts_per_step=16", "task.eval_size=100"]


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory, cache_dir):
    run_dir = str(tmp_path_factory.mktemp("uninterrupted"))
    run_siirl(["train", f"storage.uri={run_dir}", f"storage.cache_dir={cache_dir}", *SHORT])
    return metrics_by_step(run_dir)


def assert_same(a: dict, b: dict, step: int):
    for key in COMPARED:
        assert b[key] == pytest.approx(a[key], abs=TOL, rel=TOL), f"step {step} {key}: {a[key]} vs {b[key]}"


def test_stopped_run_resumes_where_it_left_off(tmp_path, cache_dir, uninterrupted):
    run_dir = str(tmp_path / "run")
    common = ["train", f"storage.uri={run_dir}", f"storage.cache_dir={cache_dir}", *SHORT]
    crashed = run_siirl(common + ["trainer.fail_at_step=5", "trainer.retries=0"], check=False)
    assert crashed.returncode != 0
    assert "trainer.fail_at_step=5" in crashed.stderr, crashed.stderr[-4000:]
    assert [s for s, _ in ckpt.complete_checkpoints(run_dir)] == [2, 4]

    run_siirl(common + ["trainer.resume=auto"])
    s = summary(run_dir)
    assert s["resumed_from_step"] == 4 and s["steps"] == 6
    resumed = metrics_by_step(run_dir)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    for step in (5, 6):
        assert_same(uninterrupted[step], resumed[step], step)


def test_failed_iteration_is_retried_from_checkpoint(tmp_path, cache_dir, uninterrupted):
    run_dir = str(tmp_path / "run")
    proc = run_siirl(["train", f"storage.uri={run_dir}", f"storage.cache_dir={cache_dir}", *SHORT,
                      "trainer.fail_at_step=3", "trainer.retries=1"])
    log = proc.stderr + proc.stdout
    assert "restored every rank from checkpoint step 2" in log
    retried = metrics_by_step(run_dir)
    assert sorted(retried) == [1, 2, 3, 4, 5, 6]
    # The replayed step 3 applied its update once: everything after matches.
    for step in (3, 6):
        assert_same(uninterrupted[step], retried[step], step)
    assert os.path.exists(os.path.join(run_dir, "final_policy", "model.safetensors"))


def test_save_error_with_continue_keeps_training(tmp_path, cache_dir, uninterrupted):
    """storage.on_save_error=continue: a checkpoint that cannot be written is logged and
    skipped; training goes on unchanged and later checkpoints are saved."""
    run_dir = str(tmp_path / "run")
    blocked = ckpt.step_dir(run_dir, 2)
    os.makedirs(os.path.dirname(blocked))
    open(blocked, "w").close()  # a file where step 2's folder must go: its save fails
    proc = run_siirl(["train", f"storage.uri={run_dir}", f"storage.cache_dir={cache_dir}", *SHORT,
                      "storage.on_save_error=continue"])
    assert "checkpoint step 2 not saved, training continues" in proc.stdout + proc.stderr
    assert [s for s, _ in ckpt.complete_checkpoints(run_dir)] == [4, 6]
    resumed = metrics_by_step(run_dir)
    for step in (2, 6):
        assert_same(uninterrupted[step], resumed[step], step)
