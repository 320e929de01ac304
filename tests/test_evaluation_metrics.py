"""mean@n, pass@k and maj@n: hand-computed values and a brute-force check of pass@k."""
import itertools
import math

import pytest

from siirl_core.evaluation import majority_answer, pass_at_k, sampled_metrics


@pytest.mark.parametrize("n,c,k,expected", [
    (4, 0, 1, 0.0),
    (4, 2, 1, 0.5),         # pass@1 is c/n
    (4, 1, 2, 0.5),         # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (5, 2, 3, 0.9),         # 1 - C(3,3)/C(5,3) = 1 - 1/10
    (4, 3, 2, 1.0),         # fewer than k wrong samples: any k include a right one
])
def test_pass_at_k_by_hand(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_matches_enumerating_every_subset():
    for n in range(1, 7):
        for c in range(n + 1):
            outcomes = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(outcomes, k))
                assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 5)


def test_majority_ignores_non_answers_and_breaks_ties_by_first_seen():
    assert majority_answer(["3", None, "4", "4", "3"]) == "3"
    assert majority_answer([None, "4", None, "4", "3"]) == "4"
    assert majority_answer([None, None]) is None


def test_sampled_metrics_by_hand():
    # prompt 1: one of four right, but the majority says 6; prompt 2: two of four, majority 7 (right)
    correct = [[True, False, False, False], [True, True, False, False]]
    answers = [["5", "6", "6", None], ["7", "7", "8", None]]
    m = sampled_metrics(correct, answers, ["5", "7"], ks=[1, 2, 4])
    assert m["mean@4"] == pytest.approx((0.25 + 0.5) / 2)
    assert m["pass@1"] == pytest.approx(m["mean@4"])
    assert m["pass@2"] == pytest.approx((0.5 + (1 - 1 / 6)) / 2)  # 1 - C(2,2)/C(4,2) for prompt 2
    assert m["pass@4"] == pytest.approx(1.0)
    assert m["maj@4"] == pytest.approx(0.5)
    assert not any(math.isnan(v) for v in m.values())
