"""The update path beyond the defaults: a frozen reference with a KL term, an entropy
bonus, two PPO epochs over two mini-batches, warm-up, with the transformers rollout
backend (so no second vLLM engine in the test process)."""
import pytest
import torch

from siirl_core.compose import compose_config
from siirl_core.config import to_dict
from siirl_core.training.actor import lr_lambda
from siirl_core.worker import RankWorker
from tests.conftest import _free_port


@pytest.fixture(scope="module")
def kl_worker(warm_model, rank_worker):  # rank_worker first: it owns the process group
    cfg = compose_config(["rollout=hf", "trainer.prompts_per_step=8", "trainer.ppo_epochs=2",
                          "trainer.mini_batches=2", "trainer.micro_batch_size=16", "trainer.lr=1e-3",
                          "trainer.warmup_steps=8", "algorithm.kl_coef=0.05", "algorithm.kl_estimator=k3",
                          "algorithm.entropy_coef=0.01", "algorithm.loss_agg_mode=seq-mean-token-mean"])
    worker = RankWorker(to_dict(cfg), warm_model, rank=0, world_size=1, master_port=_free_port())
    worker.setup()
    return worker


def test_kl_entropy_epochs_and_minibatches(kl_worker):
    assert kl_worker.work.ref_module is not None  # kl_coef > 0 loads the frozen reference
    first = kl_worker.run_until(1)
    second = kl_worker.run_until(2)
    # Step 1 starts at the reference: KL is 0 on the first mini-batch, > 0 once updated.
    assert first["actor/kl"] > 0 and second["actor/kl"] > first["actor/kl"] * 0.5
    # Later mini-batches and the second epoch are off-policy: the ratio moves from 1.
    assert second["actor/approx_kl"] != 0.0
    assert 0 <= second["actor/clipfrac"] <= 1
    assert second["actor/entropy"] > 0
    # Warm-up over 8 optimizer steps; 2 epochs x 2 mini-batches = 4 per iteration: 5/8 then 1.
    assert first["actor/lr"] == pytest.approx(5e-4 * 1.25) and second["actor/lr"] == pytest.approx(1e-3)
    ref = dict(kl_worker.work.ref_module.named_parameters())
    moved = max((p.detach() - ref[n]).abs().max().item() for n, p in kl_worker.parts.actor.module.named_parameters())
    assert moved > 0


@pytest.mark.parametrize("schedule, expected", [
    # warm-up 2 of 10 steps: (s+1)/2 while s < 2; then constant 1, or linear 1 - (s-2)/8,
    # or cosine 0.5 * (1 + cos(pi * (s-2)/8)).
    ("constant", [0.5, 1.0, 1.0, 1.0, 1.0]),
    ("linear", [0.5, 1.0, 1.0, 0.875, 0.0]),
    ("cosine", [0.5, 1.0, 1.0, 0.5 * (1 + torch.cos(torch.tensor(torch.pi / 8)).item()), 0.0]),
])
def test_lr_schedule(schedule, expected):
    f = lr_lambda(2, 10, schedule)
    assert [f(s) for s in (0, 1, 2, 3, 10)] == pytest.approx(expected)
