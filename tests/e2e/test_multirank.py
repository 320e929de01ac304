"""Two ranks as two Dask worker processes: DeepSpeed ZeRO across them, learning like
one rank, ZeRO-3 sharding with checkpoint and resume, a thin driver, and recovery
from a worker process killed for real mid-run."""
import json
import os

import pytest

from siirl_core import checkpoint as ckpt
from tests.e2e.helpers import metrics_by_step, run_siirl, run_siirl_killing_a_rank, summary
from tests.e2e.learning_cases import CASES
from tests.e2e.test_resume import assert_same_run

pytestmark = pytest.mark.slow
TOL = 1e-5
TWO_RANKS = ["cluster.n_workers=2"]


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory, cache_dir):
    run_dir = str(tmp_path_factory.mktemp("two_ranks"))
    run_siirl(CASES["two_ranks"].command(run_dir, cache_dir))
    return run_dir


def test_two_ranks_zero2_learn_like_one(two_rank_run):
    CASES["two_ranks"].check(two_rank_run)
    ranks = json.load(open(os.path.join(two_rank_run, "ranks.json")))
    assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["pid"] != ranks[1]["pid"]
    # Every rank sampled its 16 prompts x 8: the reduced token count covers the global batch.
    m = metrics_by_step(two_rank_run)
    assert sorted(m) == list(range(1, 101))


def test_driver_stays_thin(two_rank_run):
    traffic = json.load(open(os.path.join(two_rank_run, "driver_traffic.json")))
    assert traffic["calls"]["run_until"]["count"] == 100
    for method, c in traffic["calls"].items():
        # Step numbers and metric dicts only: a batch of 256 rollouts, or the 4.2 MB of
        # weights, could not fit.
        assert c["max_arg_bytes"] < 2_000, method
        assert c["max_result_bytes"] < 4_000, method
    assert traffic["keys_in_cluster_memory"] == 2  # the two actors, no data


def test_two_ranks_zero3_shards_checkpoints_and_resumes(tmp_path, cache_dir):
    """Killed after step 4 with one checkpoint (step 3), the resumed run replays step 4 from
    the sharded checkpoint: every metric equals what the killed run logged for it."""
    run_dir = str(tmp_path / "run")
    common = ["train", f"storage.uri={run_dir}", f"storage.cache_dir={cache_dir}", *TWO_RANKS,
              "model=tiny", "trainer.zero_stage=3", "trainer.steps=6", "trainer.save_every=3", "trainer.eval_every=0",
              "trainer.prompts_per_step=16", "task.eval_size=100"]
    crashed, victim = run_siirl_killing_a_rank(common + ["trainer.retries=0"], run_dir, after_step=4, rank=1)
    assert crashed.returncode != 0
    assert "rank 1 (Dask worker" in crashed.stdout and f"pid {victim})" in crashed.stdout, crashed.stdout[-4000:]
    before_kill = metrics_by_step(run_dir)
    ranks = json.load(open(os.path.join(run_dir, "ranks.json")))
    for r in ranks:  # ZeRO-3: each rank holds half of the parameters
        assert r["local_parameters"] == pytest.approx(r["parameters"] / 2, rel=0.01)
        assert (r["backend"], r["device"], r["bf16"]) == ("gloo", "cpu", False)  # NCCL and bf16 on GPUs only
    assert [s for s, _ in ckpt.complete_checkpoints(run_dir)] == [3]
    manifest = ckpt.verify(ckpt.step_dir(run_dir, 3))
    assert manifest["world_size"] == 2
    assert any("zero_pp_rank_1" in f for f in manifest["files"])  # rank 1 wrote its own shard

    run_siirl(common)
    assert summary(run_dir)["resumed_from_step"] == 3
    after = metrics_by_step(run_dir)
    assert sorted(after) == [1, 2, 3, 4, 5, 6]
    replayed = [step for step in before_kill if step > 3]
    assert replayed, sorted(before_kill)
    assert_same_run({s: before_kill[s] for s in replayed}, {s: after[s] for s in replayed})


def test_killed_worker_recovers_with_consistent_log(tmp_path, cache_dir, two_rank_run):
    run_dir = str(tmp_path / "run")
    proc, victim = run_siirl_killing_a_rank(["train", f"storage.uri={run_dir}", f"storage.cache_dir={cache_dir}",
                                             *TWO_RANKS], run_dir, after_step=31, rank=1)  # past step 25's checkpoint
    out = proc.stdout
    assert proc.returncode == 0, out[-5000:]
    # The failure names the rank and its process, whether the scheduler noticed the death
    # first ("died during run_until") or the call to it failed ("failed in run_until").
    assert "rank 1 (Dask worker" in out and f"pid {victim})" in out
    assert "restored every rank from checkpoint step 25" in out
    assert json.load(open(os.path.join(run_dir, "ranks.json")))[1]["pid"] != victim
    recovered, reference = metrics_by_step(run_dir), metrics_by_step(two_rank_run)
    assert sorted(recovered) == list(range(1, 101))
    # Deterministic replay: the recovered run ends where the uninterrupted one did.
    for key in ("reward/mean", "actor/pg_loss", "actor/entropy", "actor/grad_norm"):
        assert recovered[100][key] == pytest.approx(reference[100][key], abs=TOL, rel=TOL), key
    assert summary(run_dir)["val_accuracy_after"] == summary(two_rank_run)["val_accuracy_after"]
