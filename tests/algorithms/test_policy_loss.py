import math

import pytest
import torch

from siirl_core.algorithms import POLICY_LOSSES, ppo_clip_loss

# Five tokens in two rows plus one masked-out pad token; old log-probs are 0 so
# ratio r = exp(log_probs). clip_ratio_low = 0.2, clip_ratio_high = 0.28,
# so clip(r) is clip(r, 0.8, 1.28). Per token loss = max(-A*r, -A*clip(r)):
#   a: A= 2, r=1.5: max(-3.0, -2.56) = -2.56 = -1.28*A  (clipped term active)
#   b: A=-1, r=0.5: max( 0.5,  0.8)  =  0.8  = -A*0.8   (clipped term active)
#   c: A= 2, r=0.5: max(-1.0, -1.6)  = -1.0             (unclipped: pessimistic)
#   d: A=-1, r=1.5: max( 1.5,  1.28) =  1.5             (unclipped: pessimistic)
#   e: A= 1, r=1.1: max(-1.1, -1.1)  = -1.1             (inside the range, tie)
#   pad: A=100, r=3 masked out.
RATIOS = torch.tensor([[1.5, 0.5, 0.5], [1.5, 1.1, 3.0]])
ADV = torch.tensor([[2.0, -1.0, 2.0], [-1.0, 1.0, 100.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
CLIP = dict(clip_ratio_low=0.2, clip_ratio_high=0.28)


def _inputs(requires_grad=False):
    logp = RATIOS.log().clone().requires_grad_(requires_grad)
    return logp, torch.zeros(2, 3), ADV, MASK


def test_hand_computed_loss_and_metrics():
    loss, metrics = ppo_clip_loss(*_inputs(), **CLIP)
    # token-mean: (-2.56 + 0.8 - 1.0 + 1.5 - 1.1) / 5 = -2.36 / 5 = -0.472
    torch.testing.assert_close(loss, torch.tensor(-0.472))
    # Clipped term strictly active on a and b only: 2 / 5.
    torch.testing.assert_close(metrics["clipfrac"], torch.tensor(0.4))
    # approx_kl = mean(old - logp) = -mean(log r) = -(2 ln 1.5 + 2 ln 0.5 + ln 1.1) / 5 ≈ 0.0960
    expected_kl = -(2 * math.log(1.5) + 2 * math.log(0.5) + math.log(1.1)) / 5
    torch.testing.assert_close(metrics["approx_kl"], torch.tensor(expected_kl))
    # ratio_mean = (1.5 + 0.5 + 0.5 + 1.5 + 1.1) / 5 = 1.02
    torch.testing.assert_close(metrics["ratio_mean"], torch.tensor(1.02))
    for value in metrics.values():
        assert value.shape == () and not value.requires_grad


def test_single_token_cases_from_spec():
    one = torch.ones(1, 1)
    # A = 3 > 0, ratio 1.5, clip_high 0.28: loss = -1.28 * A = -3.84, clipped.
    loss, m = ppo_clip_loss(
        torch.tensor([[math.log(1.5)]]), torch.zeros(1, 1), torch.tensor([[3.0]]), one, clip_ratio_high=0.28
    )
    torch.testing.assert_close(loss, torch.tensor(-3.84))
    torch.testing.assert_close(m["clipfrac"], torch.tensor(1.0))
    # A = -3 < 0, ratio 0.5, clip_low 0.2: loss = -A * 0.8 = 2.4, clipped.
    loss, m = ppo_clip_loss(
        torch.tensor([[math.log(0.5)]]), torch.zeros(1, 1), torch.tensor([[-3.0]]), one, clip_ratio_low=0.2
    )
    torch.testing.assert_close(loss, torch.tensor(2.4))
    torch.testing.assert_close(m["clipfrac"], torch.tensor(1.0))


def test_gradient_flows_only_through_unclipped_tokens():
    logp, old, adv, mask = _inputs(requires_grad=True)
    loss, _ = ppo_clip_loss(logp, old, adv, mask, **CLIP)
    loss.backward()
    # d/dlogp of -A*r is -A*r, divided by the 5 tokens of token-mean:
    #   c: -2*0.5/5 = -0.2, d: 1*1.5/5 = 0.3, e: -1*1.1/5 = -0.22;
    #   a, b clipped -> 0; pad masked -> 0.
    expected = torch.tensor([[0.0, 0.0, -0.2], [0.3, -0.22, 0.0]])
    torch.testing.assert_close(logp.grad, expected)


def test_loss_agg_mode_is_applied():
    loss, _ = ppo_clip_loss(*_inputs(), loss_agg_mode="seq-mean-token-sum", **CLIP)
    # Row sums: -2.56 + 0.8 - 1.0 = -2.76 and 1.5 - 1.1 = 0.4; mean = -1.18.
    torch.testing.assert_close(loss, torch.tensor(-1.18))


def test_default_symmetric_clip():
    # Defaults clip to [0.8, 1.2]: token a now gives -1.2 * 2 = -2.4, so
    # token-mean = (-2.4 + 0.8 - 1.0 + 1.5 - 1.1) / 5 = -2.2 / 5 = -0.44.
    loss, _ = ppo_clip_loss(*_inputs())
    torch.testing.assert_close(loss, torch.tensor(-0.44))


def test_extreme_log_ratio_stays_finite():
    logp = torch.tensor([[50.0, -50.0]], requires_grad=True)
    loss, m = ppo_clip_loss(logp, torch.zeros(1, 2), torch.tensor([[-1.0, 1.0]]), torch.ones(1, 2))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert all(torch.isfinite(v) for v in m.values())


def _loop_ppo(logp, old, adv, mask, low, high):
    # Reference: scalar math per token, token-mean aggregation, clipfrac by count.
    total, n, clipped = 0.0, 0, 0
    for b in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            if not mask[b, t]:
                continue
            r = math.exp(float(logp[b, t] - old[b, t]))
            a = float(adv[b, t])
            l1, l2 = -a * r, -a * min(max(r, 1 - low), 1 + high)
            total += max(l1, l2)
            clipped += l2 > l1
            n += 1
    return total / n, clipped / n


def test_matches_python_loop():
    gen = torch.Generator().manual_seed(0)
    logp = torch.randn(5, 7, generator=gen) * 0.3 - 1
    old = torch.randn(5, 7, generator=gen) * 0.3 - 1
    adv = torch.randn(5, 7, generator=gen)
    mask = torch.rand(5, 7, generator=gen) > 0.3
    loss, m = POLICY_LOSSES.get("vanilla")(logp, old, adv, mask, clip_ratio_low=0.2, clip_ratio_high=0.28)
    ref_loss, ref_clipfrac = _loop_ppo(logp, old, adv, mask, 0.2, 0.28)
    assert float(loss) == pytest.approx(ref_loss, rel=1e-5)
    assert float(m["clipfrac"]) == pytest.approx(ref_clipfrac, abs=1e-6)
    assert 0 < ref_clipfrac < 1  # the data exercises both branches
