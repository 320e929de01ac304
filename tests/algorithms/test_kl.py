import math

import pytest
import torch

from siirl_core.algorithms import KL_ESTIMATORS, kl_penalty

# Two tokens: log pi = [-1, -2], log ref = [-2, -1], so log pi - log ref = [1, -1].
LOGP = torch.tensor([[-1.0, -2.0]])
REF = torch.tensor([[-2.0, -1.0]])


def test_k1_is_log_ratio():
    torch.testing.assert_close(kl_penalty(LOGP, REF, "k1"), torch.tensor([[1.0, -1.0]]))


def test_k2_is_half_squared_log_ratio():
    # 0.5 * 1^2 = 0.5 and 0.5 * (-1)^2 = 0.5.
    torch.testing.assert_close(kl_penalty(LOGP, REF, "k2"), torch.tensor([[0.5, 0.5]]))


def test_k3_hand_computed():
    # r = log ref - log pi = [-1, 1]:
    #   exp(-1) - (-1) - 1 = e^-1 = 0.367879
    #   exp(1) - 1 - 1     = e - 2 = 0.718282
    expected = torch.tensor([[math.exp(-1), math.e - 2]])
    torch.testing.assert_close(kl_penalty(LOGP, REF, "k3"), expected)


def test_k3_is_zero_when_policies_match_and_nonnegative():
    x = torch.randn(4, 5)
    torch.testing.assert_close(kl_penalty(x, x, "k3"), torch.zeros(4, 5))
    y = torch.randn(4, 5) * 3
    assert (kl_penalty(x, y, "k3") >= 0).all()


def test_k3_clamps_extreme_log_ratios():
    # r = -30 is clamped to -20: e^-20 + 20 - 1 ≈ 19 -> clamped to 10.
    # r = +30 is clamped to 20: e^20 - 21 ≈ 4.85e8 -> clamped to 10 (and finite).
    logp = torch.tensor([[0.0, -30.0]])
    ref = torch.tensor([[-30.0, 0.0]])
    out = kl_penalty(logp, ref, "k3")
    torch.testing.assert_close(out, torch.tensor([[10.0, 10.0]]))


def test_k3_gradient_finite_under_clamp():
    logp = torch.tensor([[-200.0, -1.0]], requires_grad=True)
    kl_penalty(logp, torch.zeros(1, 2), "k3").sum().backward()
    assert torch.isfinite(logp.grad).all()
    # Clamped token gets no gradient; r = 1 token: d/dlogp (e^r - r - 1) = -(e^1 - 1).
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -(math.e - 1)]]))


def test_k1_and_k3_are_unbiased_monte_carlo():
    # Sample tokens from pi; E_pi[k1] = E_pi[k3] = KL(pi || ref) exactly.
    gen = torch.Generator().manual_seed(0)
    pi = torch.tensor([0.6, 0.3, 0.1])
    ref = torch.tensor([0.2, 0.5, 0.3])
    true_kl = float((pi * (pi / ref).log()).sum())  # ≈ 0.395
    idx = torch.multinomial(pi, 200_000, replacement=True, generator=gen)
    logp = pi.log()[idx].unsqueeze(0)  # [1, N]
    logr = ref.log()[idx].unsqueeze(0)
    assert float(kl_penalty(logp, logr, "k1").mean()) == pytest.approx(true_kl, abs=0.01)
    assert float(kl_penalty(logp, logr, "k3").mean()) == pytest.approx(true_kl, abs=0.01)


def test_kl_penalty_dispatches_and_rejects_unknown():
    for name in ["k1", "k2", "k3"]:
        torch.testing.assert_close(kl_penalty(LOGP, REF, name), KL_ESTIMATORS.get(name)(LOGP, REF))
    with pytest.raises(KeyError) as excinfo:
        kl_penalty(LOGP, REF, "k4")
    msg = excinfo.value.args[0]
    assert "KL estimator" in msg and "'k4'" in msg and "k1, k2, k3" in msg
