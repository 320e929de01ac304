import math

import pytest
import torch

from siirl_core.algorithms import ADVANTAGE_ESTIMATORS, dr_grpo_advantages, grpo_advantages


def _expand(values, t):
    # Per-sequence values broadcast to [B, T] as the estimators return them.
    return torch.tensor(values, dtype=torch.float32).unsqueeze(-1).expand(-1, t)


def test_grpo_single_group_hand_computed():
    # One group, scores [1, 0, 0, 1]: mean = 0.5, deviations = ±0.5,
    # unbiased var = (4 * 0.25) / (4 - 1) = 1/3, std = sqrt(1/3) = 0.57735,
    # advantage = ±0.5 / (0.57735 + 1e-6) = ±0.866024.
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0])
    groups = torch.zeros(4, dtype=torch.long)
    mask = torch.ones(4, 3)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    assert a == pytest.approx(0.866024, abs=1e-6)
    out = grpo_advantages(scores, groups, mask)
    assert out.shape == (4, 3)
    torch.testing.assert_close(out, _expand([a, -a, -a, a], 3))


def test_grpo_singleton_group_gets_zero():
    # Group 7 = [3] alone: mean 3, std 1 -> advantage 0.
    # Group 0 = [1, 2]: mean 1.5, unbiased std = sqrt((0.25 + 0.25) / 1) = sqrt(0.5),
    # advantage = ∓0.5 / sqrt(0.5) = ∓sqrt(0.5) = ∓0.707107 (eps 0 for exactness).
    scores = torch.tensor([3.0, 1.0, 2.0])
    groups = torch.tensor([7, 0, 0])
    out = grpo_advantages(scores, groups, torch.ones(3, 2), eps=0.0)
    h = math.sqrt(0.5)
    torch.testing.assert_close(out, _expand([0.0, -h, h], 2))


def test_grpo_non_contiguous_group_ids():
    # Group 5 at positions 0, 2, 4 with scores [1, 2, 3]: mean 2, unbiased std 1
    #   -> [-1, 0, 1].
    # Group 2 at positions 1, 3 with scores [4, 6]: mean 5, std = sqrt((1 + 1) / 1) = sqrt(2)
    #   -> [-1/sqrt(2), 1/sqrt(2)].
    scores = torch.tensor([1.0, 4.0, 2.0, 6.0, 3.0])
    groups = torch.tensor([5, 2, 5, 2, 5])
    out = grpo_advantages(scores, groups, torch.ones(5, 1), eps=0.0)
    h = 1 / math.sqrt(2)
    torch.testing.assert_close(out, _expand([-1.0, -h, 0.0, h, 1.0], 1))


def test_grpo_huge_group_ids_are_fine():
    # Ids are compacted, so a hash-like id must not allocate an id-sized buffer.
    scores = torch.tensor([1.0, 3.0])
    groups = torch.tensor([10**15, 10**15])
    # mean 2, std sqrt(2) -> ∓1/sqrt(2).
    out = grpo_advantages(scores, groups, torch.ones(2, 1), eps=0.0)
    h = 1 / math.sqrt(2)
    torch.testing.assert_close(out, _expand([-h, h], 1))


def test_grpo_applies_response_mask():
    # Same numbers as the single-group test; padded tokens must be exactly 0.
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0])
    groups = torch.zeros(4, dtype=torch.long)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]])
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    expected = torch.tensor([[a, a, a], [-a, -a, 0], [-a, 0, 0], [0, 0, 0]], dtype=torch.float32)
    torch.testing.assert_close(grpo_advantages(scores, groups, mask), expected)
    # A bool mask gives the same result.
    torch.testing.assert_close(grpo_advantages(scores, groups, mask.bool()), expected)


def test_grpo_constant_group_is_zero_not_nan():
    # All-equal scores: std 0, so advantage = 0 / (0 + eps) = 0.
    out = grpo_advantages(torch.tensor([2.0, 2.0, 2.0]), torch.tensor([1, 1, 1]), torch.ones(3, 2))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.zeros(3, 2))


def test_dr_grpo_skips_std_division():
    # Groups as in the non-contiguous test: score - group mean only.
    # Group 5: [1, 2, 3] - 2 = [-1, 0, 1]; group 2: [4, 6] - 5 = [-1, 1]; singleton 9 -> 0.
    scores = torch.tensor([1.0, 4.0, 2.0, 6.0, 3.0, 8.0])
    groups = torch.tensor([5, 2, 5, 2, 5, 9])
    expected = _expand([-1.0, -1.0, 0.0, 1.0, 1.0, 0.0], 2)
    torch.testing.assert_close(dr_grpo_advantages(scores, groups, torch.ones(6, 2)), expected)
    torch.testing.assert_close(
        grpo_advantages(scores, groups, torch.ones(6, 2), norm_by_std=False), expected
    )


def test_dr_grpo_rejects_norm_by_std():
    with pytest.raises(TypeError):
        dr_grpo_advantages(torch.ones(2), torch.zeros(2, dtype=torch.long), torch.ones(2, 1), norm_by_std=True)


def _loop_grpo(scores, groups, mask, norm_by_std, eps):
    # Reference: per-group Python loop with torch.mean / torch.std (unbiased).
    adv = torch.zeros_like(scores)
    for g in set(groups.tolist()):
        idx = (groups == g).nonzero().squeeze(-1)
        s = scores[idx]
        if len(idx) == 1:
            adv[idx] = 0.0
            continue
        a = s - s.mean()
        if norm_by_std:
            a = a / (s.std() + eps)
        adv[idx] = a
    return adv.unsqueeze(-1) * mask


@pytest.mark.parametrize("norm_by_std", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grpo_matches_python_loop(norm_by_std, seed):
    gen = torch.Generator().manual_seed(seed)
    b, t = 40, 6
    scores = torch.randn(b, generator=gen)
    # Sparse ids drawn from a few values, including some that end up singletons.
    pool = torch.tensor([0, 3, 17, 1000, 123456789])
    groups = pool[torch.randint(0, len(pool), (b,), generator=gen)]
    groups[0] = 42  # guaranteed singleton
    mask = (torch.rand(b, t, generator=gen) > 0.3).float()
    estimator = ADVANTAGE_ESTIMATORS.get("grpo")
    out = estimator(scores, groups, mask, norm_by_std=norm_by_std, eps=1e-6)
    torch.testing.assert_close(out, _loop_grpo(scores, groups, mask, norm_by_std, 1e-6))


def test_grpo_rejects_bad_shapes():
    with pytest.raises(ValueError):
        grpo_advantages(torch.ones(3), torch.zeros(2, dtype=torch.long), torch.ones(3, 1))
    with pytest.raises(ValueError):
        grpo_advantages(torch.ones(3), torch.zeros(3, dtype=torch.long), torch.ones(2, 1))


# ---------------------------------------------------------------------------
# RLOO, REINFORCE++, REINFORCE++-baseline, ReMax, GAE.
# The new functions are imported from the module (the package __init__ does
# not re-export them); importing the package has already registered them.
# ---------------------------------------------------------------------------

import inspect
import statistics

from siirl_core.algorithms.advantages import (
    discounted_returns,
    gae_advantages,
    gae_advantages_returns,
    masked_whiten,
    reinforce_plus_plus_advantages,
    reinforce_plus_plus_baseline_advantages,
    remax_advantages,
    rloo_advantages,
)

NEW_ESTIMATORS = ["rloo", "reinforce_plus_plus", "reinforce_plus_plus_baseline", "remax", "gae"]

# Two groups of 3 interleaved (ids 10 and 3), T = 3 with padded positions.
# Rows 0, 2, 4 are group 10, rows 1, 3, 5 are group 3.
TWO_GROUPS = torch.tensor([10, 3, 10, 3, 10, 3])
TWO_GROUPS_MASK = torch.tensor(
    [[1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 1, 0], [1, 1, 1], [1, 1, 0]]
)  # lengths [1, 3, 2, 2, 3, 2], 13 tokens


def _whiten_list(xs, eps=1e-6):
    # Reference whitening with the stdlib: unbiased stdev, like masked_whiten.
    m, s = statistics.mean(xs), statistics.stdev(xs)
    return [(x - m) / (s + eps) for x in xs]


def _scatter_rows(per_token_values, mask):
    # Place a flat list of per-valid-token values back into a [B, T] zero tensor (row-major).
    out = torch.zeros(mask.shape, dtype=torch.float32)
    out[mask != 0] = torch.tensor(per_token_values, dtype=torch.float32)
    return out


def test_new_estimators_registered_with_common_signature():
    allowed_extras = {"token_rewards", "values", "baseline_scores", "gamma", "lam", "eps", "norm_by_std"}
    for name in NEW_ESTIMATORS:
        params = list(inspect.signature(ADVANTAGE_ESTIMATORS.get(name)).parameters.values())
        assert [p.name for p in params[:3]] == ["scores", "group_index", "response_mask"], name
        assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params[:3]), name
        for p in params[3:]:
            assert p.kind is p.KEYWORD_ONLY, (name, p.name)
            assert p.name in allowed_extras, (name, p.name)
    assert ADVANTAGE_ESTIMATORS.get("rloo") is rloo_advantages
    assert ADVANTAGE_ESTIMATORS.get("gae") is gae_advantages


# --- masked_whiten ----------------------------------------------------------


def test_masked_whiten_hand_computed():
    # Valid values [1, 2, 3, 6] (the 100 and NaN sit in padding): mean 3,
    # deviations [-2, -1, 0, 3], squares sum 14, unbiased var 14 / 3,
    # std = sqrt(14/3) = 2.160247 -> [-2, -1, 0, 3] / 2.160247.
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 6.0, float("nan")]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    s = math.sqrt(14 / 3)
    expected = torch.tensor([[-2 / s, -1 / s, 0.0], [0.0, 3 / s, 0.0]])
    torch.testing.assert_close(masked_whiten(x, mask, eps=0.0), expected)


def test_masked_whiten_degenerate_masks_are_zero_not_nan():
    x = torch.tensor([[5.0, 7.0]])
    torch.testing.assert_close(masked_whiten(x, torch.tensor([[0, 0]])), torch.zeros(1, 2))
    # One valid token: deviation 0, var 0 -> 0 / (0 + eps) = 0.
    torch.testing.assert_close(masked_whiten(x, torch.tensor([[0, 1]])), torch.zeros(1, 2))


# --- RLOO -------------------------------------------------------------------


def test_rloo_hand_computed_two_groups_with_padding():
    # Group 10 (rows 0, 2, 4) scores [1, 0, 2]:
    #   1 - (0 + 2)/2 = 0,  0 - (1 + 2)/2 = -1.5,  2 - (1 + 0)/2 = 1.5
    # Group 3 (rows 1, 3, 5) scores [0, 0, 3]:
    #   0 - (0 + 3)/2 = -1.5,  0 - (0 + 3)/2 = -1.5,  3 - (0 + 0)/2 = 3
    # Check with n/(n-1) * (s - mean): group 3 mean 1, 1.5 * (3 - 1) = 3. ✓
    scores = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 3.0])
    out = rloo_advantages(scores, TWO_GROUPS, TWO_GROUPS_MASK)
    per_seq = _expand([0.0, -1.5, -1.5, -1.5, 1.5, 3.0], 3)
    torch.testing.assert_close(out, per_seq * TWO_GROUPS_MASK)
    assert out.dtype == torch.float32


def test_rloo_singleton_group_gets_zero():
    # Group 4 = [5] alone -> 0. Group 1 = [1, 3]: 1 - 3 = -2, 3 - 1 = 2.
    out = rloo_advantages(torch.tensor([5.0, 1.0, 3.0]), torch.tensor([4, 1, 1]), torch.ones(3, 2))
    torch.testing.assert_close(out, _expand([0.0, -2.0, 2.0], 2))


def _loop_rloo(scores, groups, mask):
    # Reference: for each sample, mean over the other samples with the same id.
    b = scores.shape[0]
    adv = []
    for i in range(b):
        others = [scores[j].item() for j in range(b) if j != i and groups[j] == groups[i]]
        adv.append(scores[i].item() - sum(others) / len(others) if others else 0.0)
    return torch.tensor(adv).unsqueeze(-1) * mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rloo_matches_python_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    b, t = 40, 5
    scores = torch.randn(b, generator=gen)
    pool = torch.tensor([0, 3, 17, 1000, 123456789])
    groups = pool[torch.randint(0, len(pool), (b,), generator=gen)]
    groups[0] = 42  # guaranteed singleton
    mask = (torch.rand(b, t, generator=gen) > 0.3).float()
    out = ADVANTAGE_ESTIMATORS.get("rloo")(scores, groups, mask)
    torch.testing.assert_close(out, _loop_rloo(scores, groups, mask))


# --- REINFORCE++ --------------------------------------------------------------


def test_discounted_returns_hand_computed():
    # gamma = 0.5.
    # Row 0, rewards [1, 0, 2], mask [1, 1, 1]: G2 = 2, G1 = 0 + 0.5*2 = 1, G0 = 1 + 0.5*1 = 1.5.
    # Row 1, rewards [0, 4, 100], mask [1, 1, 0]: the padded 100 is ignored:
    #   G1 = 4, G0 = 0 + 0.5*4 = 2, padded position 0.
    # Row 2, rewards [1, 5, 2], mask [1, 0, 1] (a gap, e.g. tool output): the 5 is
    #   ignored and the return carries across without extra discount:
    #   G2 = 2, G0 = 1 + 0.5*2 = 2.
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.0, 4.0, 100.0], [1.0, 5.0, 2.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 1]])
    expected = torch.tensor([[1.5, 1.0, 2.0], [2.0, 4.0, 0.0], [2.0, 0.0, 2.0]])
    torch.testing.assert_close(discounted_returns(rewards, mask, 0.5), expected)
    # gamma defaults to 1: plain reward-to-go. Row 0: [3, 2, 2].
    torch.testing.assert_close(discounted_returns(rewards[:1], mask[:1]), torch.tensor([[3.0, 2.0, 2.0]]))


def test_reinforce_plus_plus_hand_computed():
    # Rows 0 and 1 of the discounted-returns example (gamma 0.5): valid returns
    # [1.5, 1, 2 | 2, 4], mean 10.5/5 = 2.1, deviations [-0.6, -1.1, -0.1, -0.1, 1.9],
    # squares sum 0.36 + 1.21 + 0.01 + 0.01 + 3.61 = 5.2, unbiased var 5.2/4 = 1.3,
    # std = sqrt(1.3) = 1.140175; advantages = deviations / (std + 1e-6).
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.0, 4.0, 100.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    d = math.sqrt(1.3) + 1e-6
    expected = torch.tensor([[-0.6 / d, -1.1 / d, -0.1 / d], [-0.1 / d, 1.9 / d, 0.0]])
    out = reinforce_plus_plus_advantages(
        torch.zeros(2), torch.tensor([0, 1]), mask, token_rewards=rewards, gamma=0.5
    )
    torch.testing.assert_close(out, expected)
    assert out[1, 2].item() == 0.0


def _loop_discounted_returns(rewards, mask, gamma):
    # Reference: per row, walk the valid tokens backwards.
    out = torch.zeros_like(rewards)
    for i in range(rewards.shape[0]):
        running = 0.0
        for t in reversed(range(rewards.shape[1])):
            if mask[i, t] != 0:
                running = rewards[i, t].item() + gamma * running
                out[i, t] = running
    return out


@pytest.mark.parametrize("gamma", [1.0, 0.9])
@pytest.mark.parametrize("seed", [0, 1])
def test_discounted_returns_match_python_loop(gamma, seed):
    gen = torch.Generator().manual_seed(seed)
    b, t = 12, 9
    rewards = torch.randn(b, t, generator=gen)
    mask = (torch.rand(b, t, generator=gen) > 0.25).float()  # includes interior gaps
    mask[0] = 0  # an empty row
    torch.testing.assert_close(
        discounted_returns(rewards, mask, gamma), _loop_discounted_returns(rewards, mask, gamma)
    )
    # And the estimator is the batch whitening of exactly these returns.
    loop_ret = _loop_discounted_returns(rewards, mask, gamma)
    flat = [loop_ret[i, j].item() for i in range(b) for j in range(t) if mask[i, j] != 0]
    out = ADVANTAGE_ESTIMATORS.get("reinforce_plus_plus")(
        torch.zeros(b), torch.arange(b), mask, token_rewards=rewards, gamma=gamma
    )
    torch.testing.assert_close(out, _scatter_rows(_whiten_list(flat), mask))


# --- REINFORCE++-baseline ------------------------------------------------------


def test_reinforce_plus_plus_baseline_hand_computed():
    # Group 10 (rows 0, 2, 4) scores [1, 0, 2], mean 1 -> centred [0, -1, 1].
    # Group 3 (rows 1, 3, 5) scores [3, 3, 0], mean 2 -> centred [1, 1, -2].
    # Row order [0, 1, -1, 1, 1, -2] with lengths [1, 3, 2, 2, 3, 2] gives the
    # 13 tokens [0, 1,1,1, -1,-1, 1,1, 1,1,1, -2,-2]: token-weighted mean
    # (0 + 3 - 2 + 2 + 3 - 4) / 13 = 2/13 (not the per-sequence mean 0), sum of
    # squares 0 + 3 + 2 + 2 + 3 + 8 = 18, so the unbiased var is
    # (18 - 13 * (2/13)^2) / 12; whitened = (c - 2/13) / (std + eps).
    scores = torch.tensor([1.0, 3.0, 0.0, 3.0, 2.0, 0.0])
    tokens = [0.0, 1, 1, 1, -1, -1, 1, 1, 1, 1, 1, -2, -2]
    expected = _scatter_rows(_whiten_list(tokens), TWO_GROUPS_MASK)
    out = reinforce_plus_plus_baseline_advantages(scores, TWO_GROUPS, TWO_GROUPS_MASK)
    torch.testing.assert_close(out, expected)
    # Spot check row 0, token 0 against the closed form above.
    std = math.sqrt((18 - 4 / 13) / 12)
    assert out[0, 0].item() == pytest.approx((0 - 2 / 13) / (std + 1e-6), rel=1e-5)
    assert (out[TWO_GROUPS_MASK == 0] == 0).all()


def test_reinforce_plus_plus_baseline_zero_mean_batch():
    # Same scores / groups (centred rows [0, 1, -1, 1, 1, -2]) with lengths
    # [1, 2, 3, 2, 3, 2] so the token-weighted mean is 0:
    # 0 + 2 - 3 + 2 + 3 - 4 = 0, 13 tokens, squares 0 + 2 + 3 + 2 + 3 + 8 = 18,
    # unbiased var 18 / 12 = 1.5, std = sqrt(1.5) = 1.224745 -> centred / std.
    scores = torch.tensor([1.0, 3.0, 0.0, 3.0, 2.0, 0.0])
    mask = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 0]])
    s = math.sqrt(1.5)
    expected = _expand([0.0, 1 / s, -1 / s, 1 / s, 1 / s, -2 / s], 3) * mask
    out = ADVANTAGE_ESTIMATORS.get("reinforce_plus_plus_baseline")(scores, TWO_GROUPS, mask, eps=0.0)
    torch.testing.assert_close(out, expected)


# --- ReMax --------------------------------------------------------------------


def test_remax_hand_computed():
    # adv = score - greedy baseline: [1 - 0.5, 0 - 0.5, 1 - 1] = [0.5, -0.5, 0].
    scores = torch.tensor([1.0, 0.0, 1.0])
    baseline = torch.tensor([0.5, 0.5, 1.0])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    expected = torch.tensor([[0.5, 0.5, 0.0], [-0.5, -0.5, -0.5], [0.0, 0.0, 0.0]])
    out = remax_advantages(scores, torch.tensor([0, 1, 2]), mask, baseline_scores=baseline)
    torch.testing.assert_close(out, expected)


def test_remax_requires_baseline_scores():
    scores, groups, mask = torch.ones(2), torch.zeros(2, dtype=torch.long), torch.ones(2, 1)
    with pytest.raises(TypeError, match="baseline_scores"):
        ADVANTAGE_ESTIMATORS.get("remax")(scores, groups, mask)
    with pytest.raises(ValueError, match="baseline_scores"):
        remax_advantages(scores, groups, mask, baseline_scores=None)
    with pytest.raises(ValueError, match="baseline_scores"):
        remax_advantages(scores, groups, mask, baseline_scores=torch.ones(3))


# --- GAE ----------------------------------------------------------------------

# gamma = 0.5, lam = 0.5 (so gamma * lam = 0.25).
# Row 0: r [0, 0, 1], V [0.5, 0.25, 1.0], mask [1, 1, 1]:
#   t=2: delta = 1 + 0.5*0 - 1.0 = 0,         A2 = 0
#   t=1: delta = 0 + 0.5*1.0 - 0.25 = 0.25,   A1 = 0.25 + 0.25*0 = 0.25
#   t=0: delta = 0 + 0.5*0.25 - 0.5 = -0.375, A0 = -0.375 + 0.25*0.25 = -0.3125
#   returns = A + V = [0.1875, 0.5, 1.0]
# Row 1: r [0, 2, 9], V [1.0, 0.5, 7.0], mask [1, 1, 0] (padding holds 9 / 7, ignored):
#   t=1: delta = 2 + 0.5*0 - 0.5 = 1.5,       A1 = 1.5
#   t=0: delta = 0 + 0.5*0.5 - 1.0 = -0.75,   A0 = -0.75 + 0.25*1.5 = -0.375
#   returns = [0.625, 2.0, 0]
# Row 2: r [0, 5, 1], V [0.5, 9.0, 0.5], mask [1, 0, 1] (a gap; its 5 and 9 ignored):
#   t=2: delta = 1 + 0 - 0.5 = 0.5,           A2 = 0.5
#   t=0: delta = 0 + 0.5*0.5 - 0.5 = -0.25,   A0 = -0.25 + 0.25*0.5 = -0.125
#   returns = [0.375, 0, 1.0]
GAE_REWARDS = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 9.0], [0.0, 5.0, 1.0]])
GAE_VALUES = torch.tensor([[0.5, 0.25, 1.0], [1.0, 0.5, 7.0], [0.5, 9.0, 0.5]])
GAE_MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 1]])
GAE_ADV = torch.tensor([[-0.3125, 0.25, 0.0], [-0.375, 1.5, 0.0], [-0.125, 0.0, 0.5]])
GAE_RET = torch.tensor([[0.1875, 0.5, 1.0], [0.625, 2.0, 0.0], [0.375, 0.0, 1.0]])


def test_gae_advantages_returns_hand_computed():
    adv, ret = gae_advantages_returns(GAE_REWARDS, GAE_VALUES, GAE_MASK, 0.5, 0.5)
    torch.testing.assert_close(adv, GAE_ADV)
    torch.testing.assert_close(ret, GAE_RET)


def test_gae_lam_one_gamma_one_is_return_minus_value():
    # With gamma = lam = 1, A_t = (sum of future rewards) - V_t. Row 0:
    # reward-to-go [1, 1, 1] - V [0.5, 0.25, 1.0] = [0.5, 0.75, 0].
    adv, ret = gae_advantages_returns(GAE_REWARDS[:1], GAE_VALUES[:1], GAE_MASK[:1], 1.0, 1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.75, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 1.0]]))


def test_gae_estimator_whitens_hand_computed_advantages():
    # Valid advantages (row-major) from the derivation above, whitened with the
    # stdlib mean / unbiased stdev.
    flat = [-0.3125, 0.25, 0.0, -0.375, 1.5, -0.125, 0.5]
    out = ADVANTAGE_ESTIMATORS.get("gae")(
        torch.zeros(3), torch.arange(3), GAE_MASK,
        token_rewards=GAE_REWARDS, values=GAE_VALUES, gamma=0.5, lam=0.5,
    )
    torch.testing.assert_close(out, _scatter_rows(_whiten_list(flat), GAE_MASK))


def _loop_gae(rewards, values, mask, gamma, lam):
    # Reference: per row, list the valid positions and run GAE over them only.
    adv = torch.zeros_like(rewards)
    ret = torch.zeros_like(rewards)
    for i in range(rewards.shape[0]):
        pos = [t for t in range(rewards.shape[1]) if mask[i, t] != 0]
        next_v, next_a = 0.0, 0.0
        for t in reversed(pos):
            r, v = rewards[i, t].item(), values[i, t].item()
            a = r + gamma * next_v - v + gamma * lam * next_a
            adv[i, t], ret[i, t] = a, a + v
            next_v, next_a = v, a
    return adv, ret


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.5, 0.0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_gae_matches_python_loop(gamma, lam, seed):
    gen = torch.Generator().manual_seed(seed)
    b, t = 10, 8
    rewards = torch.randn(b, t, generator=gen)
    values = torch.randn(b, t, generator=gen)
    mask = (torch.rand(b, t, generator=gen) > 0.25).float()
    mask[1] = 0  # an empty row
    adv, ret = gae_advantages_returns(rewards, values, mask, gamma, lam)
    ref_adv, ref_ret = _loop_gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, ref_adv)
    torch.testing.assert_close(ret, ref_ret)


def test_gae_requires_token_rewards_and_values():
    scores, groups, mask = torch.ones(2), torch.zeros(2, dtype=torch.long), torch.ones(2, 3)
    with pytest.raises(TypeError, match="values"):
        gae_advantages(scores, groups, mask, token_rewards=torch.ones(2, 3))
    with pytest.raises(TypeError, match="token_rewards"):
        gae_advantages(scores, groups, mask, values=torch.ones(2, 3))
    with pytest.raises(ValueError, match="values"):
        gae_advantages(scores, groups, mask, token_rewards=torch.ones(2, 3), values=torch.ones(2, 4))


def test_reinforce_plus_plus_requires_token_rewards():
    scores, groups, mask = torch.ones(2), torch.zeros(2, dtype=torch.long), torch.ones(2, 3)
    with pytest.raises(TypeError, match="token_rewards"):
        reinforce_plus_plus_advantages(scores, groups, mask)
    with pytest.raises(ValueError, match="token_rewards"):
        reinforce_plus_plus_advantages(scores, groups, mask, token_rewards=None)
    with pytest.raises(ValueError, match="token_rewards"):
        reinforce_plus_plus_advantages(scores, groups, mask, token_rewards=torch.ones(2, 2))


# --- shared properties ----------------------------------------------------------


def _all_kwargs(b, t, gen):
    # A superset of every extra any estimator might ask for; NaN in padding
    # positions checks that nothing leaks out of them.
    return {
        "token_rewards": torch.randn(b, t, generator=gen),
        "values": torch.randn(b, t, generator=gen),
        "baseline_scores": torch.randn(b, generator=gen),
        "gamma": 0.9,
        "lam": 0.95,
        "eps": 1e-6,
        "norm_by_std": True,
    }


@pytest.mark.parametrize("name", NEW_ESTIMATORS + ["grpo", "dr_grpo"])
def test_masked_positions_exactly_zero_and_rest_finite(name):
    gen = torch.Generator().manual_seed(3)
    b, t = 8, 5
    scores = torch.randn(b, generator=gen)
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    mask = (torch.rand(b, t, generator=gen) > 0.3).float()
    mask[:, 0] = 1  # every row non-empty
    mask[:, -1] = 0  # last column always padding
    kwargs = _all_kwargs(b, t, gen)
    kwargs["token_rewards"][mask == 0] = float("nan")
    kwargs["values"][mask == 0] = float("nan")
    fn = ADVANTAGE_ESTIMATORS.get(name)
    # Pass only what the function's signature asks for, as a trainer would.
    wanted = {k: v for k, v in kwargs.items() if k in inspect.signature(fn).parameters}
    out = fn(scores, groups, mask, **wanted)
    assert out.shape == (b, t)
    assert out.is_floating_point()
    assert (out[mask == 0] == 0).all()
    assert torch.isfinite(out).all()
    assert out[mask != 0].abs().sum() > 0  # not trivially zero everywhere
