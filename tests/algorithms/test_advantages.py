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
