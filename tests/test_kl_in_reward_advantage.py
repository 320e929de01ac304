"""With algorithm.kl_in_reward, outcome estimators (GRPO and the others that read one
score per sequence) see the score minus the coefficient times the sequence's summed KL;
checked against a hand computation."""
import math
import statistics
from types import SimpleNamespace

import pytest
import torch

from siirl_core.batch import IterationBatch
from siirl_core.compose import compose_config
from siirl_core.metrics import MetricBag
from siirl_core.pipeline import node_advantage
from siirl_core.workload import build_kl_controller

MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
# k1 KL per token is log p - log p_ref; padding carries values that must not count.
KL = torch.tensor([[0.5, 0.5, 9.0], [0.1, 0.1, 0.1], [2.0, 9.0, 9.0], [0.0, 0.0, 9.0]])
SCORES = [1.0, 0.0, 1.0, 1.0]
GROUPS = [0, 0, 1, 1]


def _advantages(estimator: str, kl_in_reward: bool) -> torch.Tensor:
    cfg = compose_config([f"algorithm.adv_estimator={estimator}", f"algorithm.kl_in_reward={kl_in_reward}",
                          "algorithm.kl_estimator=k1", "algorithm.kl_reward_coef=0.1"])
    parts = SimpleNamespace(cfg=cfg, kl_ctrl=build_kl_controller(cfg.algorithm), world_size=1)  # what the node reads
    ref = torch.full_like(KL, -1.0)
    tensors = SimpleNamespace(response_mask=MASK, group_index=torch.tensor(GROUPS))
    batch = IterationBatch(step=1, scores=torch.tensor(SCORES), old_log_probs=ref + KL, ref_log_probs=ref,
                           tensors=tensors)
    node_advantage(parts, batch, MetricBag())
    return batch.advantages


def _grpo_by_hand(scores: list[float], std: bool) -> list[float]:
    out = []
    for s, g in zip(scores, GROUPS):
        group = [x for x, h in zip(scores, GROUPS) if h == g]
        centred = s - statistics.mean(group)
        out.append(centred / (statistics.stdev(group) + 1e-6) if std else centred)
    return out


@pytest.mark.parametrize("estimator, std", [("grpo", True), ("dr_grpo", False)])
def test_outcome_estimators_see_the_kl_penalised_score(estimator, std):
    # score - 0.1 * summed KL over each response's own tokens
    penalised = [1 - 0.1 * 1.0, 0 - 0.1 * 0.3, 1 - 0.1 * 2.0, 1 - 0.1 * 0.0]
    expected = _grpo_by_hand(penalised, std)
    if std:  # two different values in a group of two: +-1/sqrt(2)
        assert expected == pytest.approx([1 / math.sqrt(2), -1 / math.sqrt(2), -1 / math.sqrt(2), 1 / math.sqrt(2)],
                                         rel=1e-5)
    adv = _advantages(estimator, kl_in_reward=True)
    torch.testing.assert_close(adv, torch.tensor(expected).unsqueeze(-1) * MASK, rtol=1e-5, atol=1e-6)
    # Without KL in the reward, group 1 (both scored 1) carries no signal.
    plain = _advantages(estimator, kl_in_reward=False)
    assert plain[2:].abs().max() == 0
