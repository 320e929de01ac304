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


# ---------------------------------------------------------------------------
# abs and full estimators, KL in reward, KL controllers.
# ---------------------------------------------------------------------------
from siirl_core.algorithms.kl import (  # noqa: E402
    AdaptiveKLController,
    FixedKLController,
    kl_abs,
    kl_full,
    kl_in_reward,
)


def test_abs_is_absolute_log_ratio():
    # |1| and |-1|.
    torch.testing.assert_close(kl_penalty(LOGP, REF, "abs"), torch.tensor([[1.0, 1.0]]))
    assert KL_ESTIMATORS.get("abs") is kl_abs


def test_full_hand_computed_with_zero_probability():
    # Token 0: p = [0.5, 0.5, 0], q = [0.25, 0.25, 0.5]:
    #   KL = 0.5 ln 2 + 0.5 ln 2 + 0 (p_v = 0 contributes nothing) = ln 2.
    # Token 1: p = q = [0.2, 0.3, 0.5]: KL = 0.
    p = torch.tensor([[[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]])
    q = torch.tensor([[[0.25, 0.25, 0.5], [0.2, 0.3, 0.5]]])
    logp = p.log().requires_grad_()  # contains -inf
    out = kl_penalty(logp, q.log(), "full")
    torch.testing.assert_close(out, torch.tensor([[math.log(2), 0.0]]))
    out.sum().backward()
    assert torch.isfinite(logp.grad).all()
    assert KL_ESTIMATORS.get("full") is kl_full


def test_full_matches_categorical_kl_loop():
    gen = torch.Generator().manual_seed(0)
    logits_p = torch.randn(2, 3, 5, generator=gen)
    logits_q = torch.randn(2, 3, 5, generator=gen)
    out = kl_full(logits_p.log_softmax(-1), logits_q.log_softmax(-1))
    ref = torch.zeros(2, 3)
    for b in range(2):
        for t in range(3):
            p, q = logits_p[b, t].softmax(-1), logits_q[b, t].softmax(-1)
            ref[b, t] = sum(float(p[v] * (p[v].log() - q[v].log())) for v in range(5))
    torch.testing.assert_close(out, ref)
    assert (out > 0).all()


def test_full_rejects_sampled_token_log_probs():
    # [B, T] inputs would otherwise be summed over T into a wrong [B] "KL".
    with pytest.raises(ValueError, match=r"\[B, T, V\]"):
        kl_penalty(LOGP, REF, "full")
    with pytest.raises(ValueError, match=r"\[B, T, V\]"):
        kl_full(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4))


# Two rows, one padded token; k1 KL = log pi - log ref = [[0.5, -0.2, 1.0], [0.3, 0.1, pad]].
KR_LOGP = torch.tensor([[-0.5, -1.2, -1.0], [-0.7, -0.9, float("nan")]])
KR_REF = torch.tensor([[-1.0, -1.0, -2.0], [-1.0, -1.0, -1.0]])
KR_MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
KR_REWARDS = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])


def test_kl_in_reward_k1_hand_computed():
    new, kl_mean = kl_in_reward(KR_REWARDS, KR_LOGP, KR_REF, KR_MASK, coef=0.1, estimator="k1")
    # rewards - 0.1 * kl: [[0 - 0.05, 0 + 0.02, 1 - 0.1], [0 - 0.03, 2 - 0.01, pad unchanged 0]].
    torch.testing.assert_close(new, torch.tensor([[-0.05, 0.02, 0.9], [-0.03, 1.99, 0.0]]))
    # Masked mean KL = (0.5 - 0.2 + 1.0 + 0.3 + 0.1) / 5 = 0.34.
    torch.testing.assert_close(kl_mean, torch.tensor(0.34))
    assert kl_mean.shape == ()


def test_kl_in_reward_uses_estimator_and_is_detached():
    logp = KR_LOGP.clone().requires_grad_()
    new, kl_mean = kl_in_reward(KR_REWARDS, logp, KR_REF, KR_MASK, coef=2.0, estimator="k2")
    # k2 = 0.5 * kl^2 = [[0.125, 0.02, 0.5], [0.045, 0.005, pad]]; times 2 subtracted.
    torch.testing.assert_close(new, torch.tensor([[-0.25, -0.04, 0.0], [-0.09, 1.99, 0.0]]))
    # (0.125 + 0.02 + 0.5 + 0.045 + 0.005) / 5 = 0.139
    torch.testing.assert_close(kl_mean, torch.tensor(0.139))
    assert not new.requires_grad and not kl_mean.requires_grad


def test_fixed_controller_never_moves():
    ctl = FixedKLController(0.05)
    ctl.update(current_kl=100.0, n_steps=1000)
    ctl.update(current_kl=0.0, n_steps=1000)
    assert ctl.value == 0.05


def test_adaptive_controller_moves_towards_target():
    ctl = AdaptiveKLController(init_coef=0.1, target_kl=6.0, horizon=10000)
    # KL above target: error = 9/6 - 1 = 0.5, clipped to 0.2;
    # mult = 1 + 0.2 * 256 / 10000 = 1.00512 -> 0.100512.
    ctl.update(current_kl=9.0, n_steps=256)
    assert ctl.value == pytest.approx(0.100512, rel=1e-12)
    # KL below target: error = 5.4/6 - 1 = -0.1 (inside the clip);
    # mult = 1 - 0.1 * 1000 / 10000 = 0.99 -> 0.100512 * 0.99 = 0.09950688.
    ctl.update(current_kl=5.4, n_steps=1000)
    assert ctl.value == pytest.approx(0.09950688, rel=1e-12)
    # Far below: error -1 clipped to -0.2; mult = 1 - 0.2 * 5000 / 10000 = 0.9.
    ctl.update(current_kl=0.0, n_steps=5000)
    assert ctl.value == pytest.approx(0.09950688 * 0.9, rel=1e-12)
    # At target: unchanged.
    before = ctl.value
    ctl.update(current_kl=6.0, n_steps=5000)
    assert ctl.value == pytest.approx(before, rel=1e-12)


@pytest.mark.parametrize("kwargs", [dict(target_kl=0.0, horizon=10), dict(target_kl=1.0, horizon=0)])
def test_adaptive_controller_validates(kwargs):
    with pytest.raises(ValueError):
        AdaptiveKLController(init_coef=0.1, **kwargs)
