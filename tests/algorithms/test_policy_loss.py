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


# ---------------------------------------------------------------------------
# Dual-clip PPO ("vanilla").
# ---------------------------------------------------------------------------
from siirl_core.algorithms.policy_loss import (  # noqa: E402
    cispo_loss,
    gmpo_loss,
    gpg_loss,
    gspo_loss,
    truncated_is_weights,
)

# old log-probs 0, so r = exp(log_probs). Defaults: clip(r, 0.8, 1.2), c = 3.
# Per token L = max(-A*r, -A*clip(r)); where A < 0 also L = min(L, -A*c):
#   a: A=-1,   r=4:   max(4, 1.2)   = 4   -> min(4, 3)   = 3    (dual clip)
#   b: A= 2,   r=1.5: max(-3, -2.4) = -2.4                       (clipped)
#   c: A=-2,   r=0.5: max(1, 1.6)   = 1.6 -> min(1.6, 6) = 1.6  (clipped)
#   d: A= 1,   r=1:   max(-1, -1)   = -1                         (tie)
#   e: A=-0.5, r=10:  max(5, 0.6)   = 5   -> min(5, 1.5) = 1.5  (dual clip)
#   pad: A=-100, r=100, masked out.
DC_RATIOS = torch.tensor([[4.0, 1.5, 0.5], [1.0, 10.0, 100.0]])
DC_ADV = torch.tensor([[-1.0, 2.0, -2.0], [1.0, -0.5, -100.0]])
DC_MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


def _dc_inputs(requires_grad=False):
    return DC_RATIOS.log().clone().requires_grad_(requires_grad), torch.zeros(2, 3), DC_ADV, DC_MASK


def test_dual_clip_hand_computed():
    loss, m = ppo_clip_loss(*_dc_inputs())
    # token-mean: (3 - 2.4 + 1.6 - 1 + 1.5) / 5 = 2.7 / 5 = 0.54
    torch.testing.assert_close(loss, torch.tensor(0.54))
    # PPO clip strictly active on b and c: 2/5; dual clip active on a and e: 2/5.
    torch.testing.assert_close(m["clipfrac"], torch.tensor(0.4))
    torch.testing.assert_close(m["clipfrac_lower"], torch.tensor(0.4))
    # ratio_mean = (4 + 1.5 + 0.5 + 1 + 10) / 5 = 3.4
    torch.testing.assert_close(m["ratio_mean"], torch.tensor(3.4))


def test_dual_clip_c_is_used():
    # c = 5: a -> min(4, 5) = 4 (cap inactive), e -> min(5, 2.5) = 2.5 (active).
    # (4 - 2.4 + 1.6 - 1 + 2.5) / 5 = 4.7 / 5 = 0.94; dual clip only on e: 1/5.
    loss, m = ppo_clip_loss(*_dc_inputs(), clip_ratio_c=5.0)
    torch.testing.assert_close(loss, torch.tensor(0.94))
    torch.testing.assert_close(m["clipfrac_lower"], torch.tensor(0.2))


def test_dual_clip_gradient_is_zero_where_capped():
    logp, old, adv, mask = _dc_inputs(requires_grad=True)
    ppo_clip_loss(logp, old, adv, mask)[0].backward()
    # Only d is unclipped: d/dlogp(-A*r) = -A*r = -1, over 5 tokens = -0.2.
    # a, e (capped at the constant -A*c) and b, c (clipped) get no gradient.
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 0.0, 0.0], [-0.2, 0.0, 0.0]]))


@pytest.mark.parametrize("c", [1.0, 0.5, float("nan")])
def test_dual_clip_rejects_c_not_above_one(c):
    with pytest.raises(ValueError, match="clip_ratio_c"):
        ppo_clip_loss(*_dc_inputs(), clip_ratio_c=c)


def _loop_dual_clip(logp, old, adv, mask, low, high, c):
    total, n, lower = 0.0, 0, 0
    for b in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            if not mask[b, t]:
                continue
            r = math.exp(float(logp[b, t] - old[b, t]))
            a = float(adv[b, t])
            loss = max(-a * r, -a * min(max(r, 1 - low), 1 + high))
            if a < 0:
                lower += loss > -a * c
                loss = min(loss, -a * c)
            total += loss
            n += 1
    return total / n, lower / n


def test_dual_clip_matches_python_loop():
    gen = torch.Generator().manual_seed(1)
    # Wide log-ratio spread so the dual clip (r > 2) fires on some tokens.
    logp = torch.randn(6, 8, generator=gen) * 1.0 - 1
    old = torch.randn(6, 8, generator=gen) * 0.3 - 1
    adv = torch.randn(6, 8, generator=gen)
    mask = torch.rand(6, 8, generator=gen) > 0.3
    loss, m = ppo_clip_loss(logp, old, adv, mask, clip_ratio_c=2.0)
    ref_loss, ref_lower = _loop_dual_clip(logp, old, adv, mask, 0.2, 0.2, 2.0)
    assert float(loss) == pytest.approx(ref_loss, rel=1e-5)
    assert float(m["clipfrac_lower"]) == pytest.approx(ref_lower, abs=1e-6)
    assert 0 < ref_lower < 1


# ---------------------------------------------------------------------------
# GSPO.
# ---------------------------------------------------------------------------
# old log-probs 0. Row 0 log-ratios [ln 4, 0, 0], A = +1: s_0 = exp(ln 4 / 3) =
# 4^(1/3) ≈ 1.5874 > 1.2, so each token's loss is max(-1.5874, -1.2) = -1.2.
# Row 1 log-ratios [ln 1.21, 0, pad], A = -1: s_1 = exp(ln 1.21 / 2) = 1.1,
# inside [0.8, 1.2], so each loss is 1.1. (Per-token PPO would treat token 0's
# ratio 1.21 as out of range; at the sequence level it is not.)
GSPO_RATIOS = torch.tensor([[4.0, 1.0, 1.0], [1.21, 1.0, 50.0]])
GSPO_ADV = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -7.0]])


def _gspo_inputs(requires_grad=False):
    return GSPO_RATIOS.log().clone().requires_grad_(requires_grad), torch.zeros(2, 3), GSPO_ADV, MASK


def test_gspo_hand_computed():
    loss, m = gspo_loss(*_gspo_inputs())
    # token-mean: (3 * -1.2 + 2 * 1.1) / 5 = -1.4 / 5 = -0.28
    torch.testing.assert_close(loss, torch.tensor(-0.28))
    # seq-mean-token-mean: (-1.2 + 1.1) / 2 = -0.05
    loss_seq, _ = gspo_loss(*_gspo_inputs(), loss_agg_mode="seq-mean-token-mean")
    torch.testing.assert_close(loss_seq, torch.tensor(-0.05))
    # All of row 0 clipped, none of row 1: 3/5.
    torch.testing.assert_close(m["clipfrac"], torch.tensor(0.6))
    # ratio_mean over sequences: (4^(1/3) + 1.1) / 2
    torch.testing.assert_close(m["ratio_mean"], torch.tensor((4 ** (1 / 3) + 1.1) / 2))
    torch.testing.assert_close(m["approx_kl"], torch.tensor(-(math.log(4) + math.log(1.21)) / 5))


def test_gspo_clipped_sequence_gets_no_gradient():
    logp, old, adv, mask = _gspo_inputs(requires_grad=True)
    gspo_loss(logp, old, adv, mask)[0].backward()
    # Row 0 clipped -> 0. Row 1: d/dlogp_t(-A * sg[s] * exp(lp_t - sg[lp_t])) = -A * s
    # = 1.1 per token, over 5 tokens = 0.22. Pad -> 0.
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 0.0, 0.0], [0.22, 0.22, 0.0]]))


def test_gspo_gradient_is_per_token():
    # Row 0 log-ratios [0.1, -0.1, 0.3] (mean 0.1), A = [1, 2, -1];
    # row 1 log-ratios [0.2, 0.0, pad] (mean 0.1), A = [0.5, 3, pad].
    # Both s_i = e^0.1 ≈ 1.105, inside [0.8, 1.2]: no clipping.
    # seq-mean-token-mean gives d loss / d logp_{i,t} = -A_{i,t} * s_i / (|y_i| * 2):
    # each token's gradient follows its own advantage. A pure sequence-level
    # ratio (no stop-gradient) would give every token of a row the same gradient.
    logp = torch.tensor([[0.1, -0.1, 0.3], [0.2, 0.0, 0.0]], requires_grad=True)
    adv = torch.tensor([[1.0, 2.0, -1.0], [0.5, 3.0, 0.0]])
    gspo_loss(logp, torch.zeros(2, 3), adv, MASK, loss_agg_mode="seq-mean-token-mean")[0].backward()
    s = math.exp(0.1)
    expected = torch.tensor([[-1 * s / 6, -2 * s / 6, 1 * s / 6], [-0.5 * s / 4, -3 * s / 4, 0.0]])
    torch.testing.assert_close(logp.grad, expected)


def _loop_gspo(logp, old, adv, mask, low, high, seq_mean):
    seq_losses, total, n, clipped = [], 0.0, 0, 0
    for b in range(logp.shape[0]):
        idx = [t for t in range(logp.shape[1]) if mask[b, t]]
        if not idx:
            continue
        s = math.exp(sum(float(logp[b, t] - old[b, t]) for t in idx) / len(idx))
        row = []
        for t in idx:
            a = float(adv[b, t])
            l1, l2 = -a * s, -a * min(max(s, 1 - low), 1 + high)
            row.append(max(l1, l2))
            clipped += l2 > l1
        seq_losses.append(sum(row) / len(row))
        total += sum(row)
        n += len(row)
    loss = sum(seq_losses) / len(seq_losses) if seq_mean else total / n
    return loss, clipped / n


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_gspo_matches_python_loop(mode):
    gen = torch.Generator().manual_seed(2)
    logp = torch.randn(8, 7, generator=gen) * 0.3 - 1
    old = torch.randn(8, 7, generator=gen) * 0.3 - 1
    adv = torch.randn(8, 7, generator=gen)
    mask = torch.rand(8, 7, generator=gen) > 0.3
    mask[3] = False  # an empty row must be skipped, not counted as zero loss
    loss, m = gspo_loss(logp, old, adv, mask, clip_ratio_low=0.1, clip_ratio_high=0.1, loss_agg_mode=mode)
    ref_loss, ref_clipfrac = _loop_gspo(logp, old, adv, mask, 0.1, 0.1, mode == "seq-mean-token-mean")
    assert float(loss) == pytest.approx(ref_loss, rel=1e-5)
    assert float(m["clipfrac"]) == pytest.approx(ref_clipfrac, abs=1e-6)
    assert 0 < ref_clipfrac < 1


# ---------------------------------------------------------------------------
# GMPO.
# ---------------------------------------------------------------------------
# old log-probs 0, defaults: log r clipped to [ln 0.8, ln 1.2] on the pessimistic side.
# Row 0, A = +1: log r = [ln 1.5, ln 0.5, 0]; A > 0 clips from above only:
#   ln 1.5 -> ln 1.2, ln 0.5 stays. Geometric mean = (1.2 * 0.5 * 1)^(1/3) = 0.6^(1/3).
#   loss_0 = -1 * 0.6^(1/3) ≈ -0.8434
# Row 1, A = -2: log r = [ln 0.5, ln 1.5, pad]; A < 0 clips from below only:
#   ln 0.5 -> ln 0.8, ln 1.5 stays. Geometric mean = (0.8 * 1.5)^(1/2) = 1.2^(1/2).
#   loss_1 = 2 * 1.2^(1/2) ≈ 2.1909
# loss = mean over the two sequences.
GMPO_RATIOS = torch.tensor([[1.5, 0.5, 1.0], [0.5, 1.5, 9.0]])
GMPO_ADV = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]])
GMPO_L0 = -(0.6 ** (1 / 3))
GMPO_L1 = 2 * 1.2**0.5


def _gmpo_inputs(requires_grad=False):
    return GMPO_RATIOS.log().clone().requires_grad_(requires_grad), torch.zeros(2, 3), GMPO_ADV, MASK


def test_gmpo_hand_computed():
    loss, m = gmpo_loss(*_gmpo_inputs())
    torch.testing.assert_close(loss, torch.tensor((GMPO_L0 + GMPO_L1) / 2))
    # Clipped: row 0 token 0 and row 1 token 0: 2/5.
    torch.testing.assert_close(m["clipfrac"], torch.tensor(0.4))
    torch.testing.assert_close(m["ratio_mean"], torch.tensor((0.6 ** (1 / 3) + 1.2**0.5) / 2))


def test_gmpo_ignores_loss_agg_mode():
    a, _ = gmpo_loss(*_gmpo_inputs(), loss_agg_mode="token-mean")
    b, _ = gmpo_loss(*_gmpo_inputs(), loss_agg_mode="seq-mean-token-sum")
    torch.testing.assert_close(a, b)


def test_gmpo_gradient_zero_on_clipped_tokens():
    logp, old, adv, mask = _gmpo_inputs(requires_grad=True)
    gmpo_loss(logp, old, adv, mask)[0].backward()
    # d loss_i / d logp_t = -A_i * ratio_i / |y_i| for unclipped tokens, halved by
    # the mean over 2 sequences. Row 0: -0.6^(1/3) / 3 / 2; row 1: 2 * 1.2^0.5 / 2 / 2.
    g0 = GMPO_L0 / 3 / 2
    g1 = GMPO_L1 / 2 / 2
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, g0, g0], [0.0, g1, 0.0]]))


def _loop_gmpo(logp, old, adv, mask, low, high):
    seq_losses, n, clipped = [], 0, 0
    for b in range(logp.shape[0]):
        idx = [t for t in range(logp.shape[1]) if mask[b, t]]
        if not idx:
            continue
        a = sum(float(adv[b, t]) for t in idx) / len(idx)
        total = 0.0
        for t in idx:
            lr = float(logp[b, t] - old[b, t])
            c = min(lr, math.log(1 + high)) if a >= 0 else max(lr, math.log(1 - low))
            clipped += c != lr
            total += c
        n += len(idx)
        seq_losses.append(-a * math.exp(total / len(idx)))
    return sum(seq_losses) / len(seq_losses), clipped / n


def test_gmpo_matches_python_loop():
    gen = torch.Generator().manual_seed(3)
    logp = torch.randn(8, 7, generator=gen) * 0.3 - 1
    old = torch.randn(8, 7, generator=gen) * 0.3 - 1
    adv = torch.randn(8, 1, generator=gen).expand(8, 7)  # sequence-level, as GMPO assumes
    mask = torch.rand(8, 7, generator=gen) > 0.3
    mask[5] = False
    loss, m = gmpo_loss(logp, old, adv, mask, clip_ratio_low=0.2, clip_ratio_high=0.28)
    ref_loss, ref_clipfrac = _loop_gmpo(logp, old, adv, mask, 0.2, 0.28)
    assert float(loss) == pytest.approx(ref_loss, rel=1e-5)
    assert float(m["clipfrac"]) == pytest.approx(ref_clipfrac, abs=1e-6)
    assert 0 < ref_clipfrac < 1


# ---------------------------------------------------------------------------
# CISPO and GPG.
# ---------------------------------------------------------------------------
# Log-probs LP and ratios R (old = LP - ln R), clip_ratio_high = 0.2:
# weight w = min(r, 1.2) (no lower bound) = [[1.2, 0.5, 1.0], [1.2, 0.9, pad]].
#   a: -w*A*lp = -1.2 *  1   * -1.0 =  1.2
#   b:           -0.5 * -1   * -2.0 = -1.0   (r = 0.5 kept: no lower clip)
#   c:           -1.0 *  2   * -0.5 =  1.0
#   d:           -1.2 * -2   * -0.2 = -0.48
#   e:           -0.9 *  0.5 * -3.0 =  1.35
# token-mean = 2.07 / 5 = 0.414.
CI_LP = torch.tensor([[-1.0, -2.0, -0.5], [-0.2, -3.0, -1.0]])
CI_R = torch.tensor([[1.5, 0.5, 1.0], [2.0, 0.9, 5.0]])
CI_ADV = torch.tensor([[1.0, -1.0, 2.0], [-2.0, 0.5, 100.0]])
CI_W = torch.tensor([[1.2, 0.5, 1.0], [1.2, 0.9, 0.0]])


def _ci_inputs(requires_grad=False):
    logp = CI_LP.clone().requires_grad_(requires_grad)
    return logp, CI_LP - CI_R.log(), CI_ADV, MASK


def test_cispo_hand_computed():
    loss, m = cispo_loss(*_ci_inputs())
    torch.testing.assert_close(loss, torch.tensor(0.414))
    # r > 1.2 on a and d: 2/5. ratio_mean = (1.5 + 0.5 + 1 + 2 + 0.9) / 5 = 1.18.
    torch.testing.assert_close(m["clipfrac"], torch.tensor(0.4))
    torch.testing.assert_close(m["ratio_mean"], torch.tensor(1.18))


def test_cispo_gradient_is_clipped_weight_times_advantage():
    logp, old, adv, mask = _ci_inputs(requires_grad=True)
    cispo_loss(logp, old, adv, mask)[0].backward()
    # With the weight stop-gradded, d/dlp(-w*A*lp) = -w*A, over 5 tokens.
    # Clipped tokens (a, d) keep their gradient, unlike PPO. Without the
    # stop-gradient the derivative would be -A*r*(1 + lp) instead.
    expected = -CI_W * CI_ADV * MASK / 5
    torch.testing.assert_close(logp.grad, expected)
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.24, 0.1, -0.4], [0.48, -0.09, 0.0]]))


def test_gpg_hand_computed_and_gradient():
    logp, old, adv, mask = _ci_inputs(requires_grad=True)
    loss, m = gpg_loss(logp, old, adv, mask)
    # -A*lp: [1.0, -2.0, 1.0], [-0.4, 1.5]; sum 1.1, token-mean 0.22.
    torch.testing.assert_close(loss, torch.tensor(0.22))
    loss.backward()
    # d/dlp = -A / 5, independent of the ratio.
    torch.testing.assert_close(logp.grad, -CI_ADV * MASK / 5)
    assert float(m["clipfrac"]) == 0.0
    # Row sums 0.0 and 1.1, mean 0.55.
    loss_sum, _ = gpg_loss(*_ci_inputs(), loss_agg_mode="seq-mean-token-sum")
    torch.testing.assert_close(loss_sum, torch.tensor(0.55))


# ---------------------------------------------------------------------------
# Uniform signature and is_weights.
# ---------------------------------------------------------------------------
NEW_LOSSES = ["vanilla", "gspo", "gmpo", "cispo", "gpg"]


@pytest.mark.parametrize("name", NEW_LOSSES)
def test_every_loss_takes_the_uniform_signature(name):
    logp, old, adv, mask = _ci_inputs(requires_grad=True)
    loss, metrics = POLICY_LOSSES.get(name)(
        logp, old, adv, mask, clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0,
        loss_agg_mode="seq-mean-token-mean", is_weights=None,
    )
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logp.grad).all() and logp.grad.abs().sum() > 0
    assert {"clipfrac", "approx_kl", "ratio_mean"} <= set(metrics)
    for value in metrics.values():
        assert value.shape == () and not value.requires_grad


@pytest.mark.parametrize("name", NEW_LOSSES)
def test_constant_is_weights_scale_every_loss(name):
    fn = POLICY_LOSSES.get(name)
    base, _ = fn(*_ci_inputs())
    # Weight 3 on every token (pad NaN: must be ignored) scales each per-token
    # loss, and so the aggregate, by 3; GMPO's geometric mean of 3s is also 3.
    w = torch.full((2, 3), 3.0)
    w[1, 2] = float("nan")
    scaled, _ = fn(*_ci_inputs(), is_weights=w)
    torch.testing.assert_close(scaled, 3 * base)


def test_is_weights_per_token_vanilla():
    # Dual-clip per-token losses [[3, -2.4, 1.6], [-1, 1.5, pad]] times
    # weights [[2, 1, 0], [0.5, 1, pad]]: (6 - 2.4 + 0 - 0.5 + 1.5) / 5 = 0.92.
    w = torch.tensor([[2.0, 1.0, 0.0], [0.5, 1.0, 7.0]])
    loss, _ = ppo_clip_loss(*_dc_inputs(), is_weights=w)
    torch.testing.assert_close(loss, torch.tensor(0.92))


def test_is_weights_gmpo_use_geometric_mean():
    # Row 0 weights [1, 4, 2]: geometric mean 8^(1/3) = 2; row 1 [0.25, 1]: 0.5.
    w = torch.tensor([[1.0, 4.0, 2.0], [0.25, 1.0, 9.0]])
    loss, _ = gmpo_loss(*_gmpo_inputs(), is_weights=w)
    torch.testing.assert_close(loss, torch.tensor((GMPO_L0 * 2 + GMPO_L1 * 0.5) / 2))


def test_is_weights_carry_no_gradient_and_must_match_shape():
    logp, old, adv, mask = _ci_inputs(requires_grad=True)
    w = torch.full((2, 3), 2.0, requires_grad=True)
    gpg_loss(logp, old, adv, mask, is_weights=w)[0].backward()
    assert w.grad is None
    torch.testing.assert_close(logp.grad, -2 * CI_ADV * MASK / 5)
    with pytest.raises(ValueError, match="is_weights"):
        gpg_loss(logp, old, adv, mask, is_weights=torch.ones(2, 1))


# ---------------------------------------------------------------------------
# Truncated importance sampling weights.
# ---------------------------------------------------------------------------
# old - rollout = ln of [[0.5, 3, 1], [1.5, 2.5, pad]]; cap 2:
# weights = [[0.5, 2, 1], [1.5, 2, 0]]; 3 and 2.5 truncated -> 2/5.
# mismatch_kl = mean(rollout - old) = -ln(0.5 * 3 * 1 * 1.5 * 2.5) / 5 = -ln(5.625) / 5.
# is_weight_mean = (0.5 + 2 + 1 + 1.5 + 2) / 5 = 1.4.
TIS_RAW = torch.tensor([[0.5, 3.0, 1.0], [1.5, 2.5, 1.0]])


def _tis_inputs():
    rollout = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, 0.0]])
    old = rollout + TIS_RAW.log()
    old[1, 2] = float("nan")  # garbage in padding must not reach the weights
    return old, rollout, MASK


def test_truncated_is_weights_hand_computed():
    w, m = truncated_is_weights(*_tis_inputs())
    torch.testing.assert_close(w, torch.tensor([[0.5, 2.0, 1.0], [1.5, 2.0, 0.0]]))
    torch.testing.assert_close(m["mismatch_kl"], torch.tensor(-math.log(5.625) / 5))
    torch.testing.assert_close(m["is_weight_mean"], torch.tensor(1.4))
    torch.testing.assert_close(m["is_truncated_frac"], torch.tensor(0.4))
    # A higher cap truncates nothing (3 is not above 3).
    w3, m3 = truncated_is_weights(*_tis_inputs(), cap=3.0)
    torch.testing.assert_close(w3, torch.tensor([[0.5, 3.0, 1.0], [1.5, 2.5, 0.0]]))
    torch.testing.assert_close(m3["is_truncated_frac"], torch.tensor(0.0))


def test_truncated_is_weights_are_detached_and_validate_cap():
    old, rollout, mask = _tis_inputs()
    w, m = truncated_is_weights(old.requires_grad_(), rollout, mask)
    assert not w.requires_grad and all(not v.requires_grad for v in m.values())
    with pytest.raises(ValueError, match="cap"):
        truncated_is_weights(old, rollout, mask, cap=0.0)


def test_truncated_is_weights_feed_a_loss():
    w, _ = truncated_is_weights(*_tis_inputs())
    # GPG per-token losses [[1, -2, 1], [-0.4, 1.5]] times w:
    # (0.5 - 4 + 1 - 0.6 + 3) / 5 = -0.1 / 5 = -0.02.
    loss, _ = gpg_loss(*_ci_inputs(), is_weights=w)
    torch.testing.assert_close(loss, torch.tensor(-0.02))


def test_truncated_is_weights_match_python_loop():
    gen = torch.Generator().manual_seed(4)
    old = torch.randn(6, 9, generator=gen) - 1
    rollout = old + torch.randn(6, 9, generator=gen) * 0.8
    mask = torch.rand(6, 9, generator=gen) > 0.3
    cap = 1.5
    w, m = truncated_is_weights(old, rollout, mask, cap=cap)
    ref = torch.zeros(6, 9)
    kl, wsum, trunc, n = 0.0, 0.0, 0, 0
    for b in range(6):
        for t in range(9):
            if not mask[b, t]:
                continue
            raw = math.exp(float(old[b, t] - rollout[b, t]))
            ref[b, t] = min(raw, cap)
            kl += float(rollout[b, t] - old[b, t])
            wsum += min(raw, cap)
            trunc += raw > cap
            n += 1
    torch.testing.assert_close(w, ref)
    assert float(m["mismatch_kl"]) == pytest.approx(kl / n, rel=1e-5)
    assert float(m["is_weight_mean"]) == pytest.approx(wsum / n, rel=1e-5)
    assert float(m["is_truncated_frac"]) == pytest.approx(trunc / n, abs=1e-6)
    assert 0 < trunc < n


def test_gmpo_clip_side_follows_sequence_advantage():
    # Token-varying advantages [3, -1]: sequence advantage = mean = 1 > 0, so
    # both log-ratios ln 1.5 are clipped from above to ln 1.2 (the pessimistic
    # side for the sign the sequence is scored with): loss = -1 * 1.2 = -1.2.
    # Choosing the side per token would leave token 1 at ln 1.5 and give the
    # optimistic -sqrt(1.2 * 1.5) ≈ -1.342.
    logp = torch.full((1, 2), math.log(1.5))
    loss, m = gmpo_loss(logp, torch.zeros(1, 2), torch.tensor([[3.0, -1.0]]), torch.ones(1, 2))
    torch.testing.assert_close(loss, torch.tensor(-1.2))
    torch.testing.assert_close(m["clipfrac"], torch.tensor(1.0))
