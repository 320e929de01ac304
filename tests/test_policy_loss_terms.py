"""The loss the actor minimises: policy loss + kl_coef * KL - entropy_coef * entropy, each
aggregated over the response tokens, checked against a hand computation; and a gradient
step on it raises the log-probability of positive-advantage tokens and lowers the others."""
import pytest
import torch

from siirl_core.algorithms.entropy import entropy_from_logits, logprobs_from_logits
from siirl_core.compose import compose_config
from siirl_core.training.actor import policy_loss_terms

MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
ADV = torch.tensor([[1.0, 1.0, 0.0], [-0.5, -0.5, -0.5]])


def _algo(**overrides):
    algo = compose_config([]).algorithm
    for k, v in {"policy_loss": "vanilla", "loss_agg_mode": "token-mean", "kl_estimator": "k1", **overrides}.items():
        setattr(algo, k, v)
    return algo


def test_combined_loss_by_hand():
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -1.5, -1.0]])
    ref = torch.tensor([[-1.5, -2.0, -1.0], [-0.5, -1.0, -2.0]])
    entropy = torch.tensor([[0.8, 0.6, 5.0], [1.0, 0.4, 0.2]])
    algo = _algo(kl_coef=0.1, entropy_coef=0.01)
    loss, m = policy_loss_terms(logp, entropy, logp.detach(), ref, ADV, MASK, algo)
    tokens = [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]  # the 5 response tokens
    pg = sum(-ADV[i, j].item() for i, j in tokens) / 5  # on-policy: every ratio is 1, nothing clipped
    kl = sum(logp[i, j].item() - ref[i, j].item() for i, j in tokens) / 5  # k1
    ent = sum(entropy[i, j].item() for i, j in tokens) / 5
    assert m["actor/pg_loss"].item() == pytest.approx(pg)
    assert m["actor/kl"].item() == pytest.approx(kl)
    assert m["actor/entropy"].item() == pytest.approx(ent)
    assert loss.item() == pytest.approx(pg + 0.1 * kl - 0.01 * ent)


@pytest.mark.parametrize("policy_loss", ["vanilla", "gspo", "gmpo", "cispo", "gpg"])
def test_a_step_raises_positive_and_lowers_negative_advantage_tokens(policy_loss):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, requires_grad=True)  # [B, T, V]
    tokens = torch.tensor([[1, 3, 0], [2, 2, 4]])
    old = logprobs_from_logits(logits.detach(), tokens)
    opt = torch.optim.SGD([logits], lr=0.5)
    loss, _ = policy_loss_terms(logprobs_from_logits(logits, tokens), entropy_from_logits(logits), old, None, ADV,
                                MASK, _algo(policy_loss=policy_loss))
    opt.zero_grad()
    loss.backward()
    opt.step()
    moved = (logprobs_from_logits(logits.detach(), tokens) - old) * MASK
    assert (moved[0, :2] > 0).all(), moved  # advantage +1
    assert (moved[1] < 0).all(), moved  # advantage -0.5
    assert moved[0, 2] == 0  # outside the response mask
