import math

import pytest
import torch

from siirl_core.algorithms import entropy_from_logits, logprobs_from_logits


def test_two_token_vocab_hand_computed():
    # Row 0: logits [0, 0] -> p = [0.5, 0.5]; log p(label 1) = -ln 2; H = ln 2.
    # Row 1: logits [ln 3, 0] -> p = [0.75, 0.25]; log p(label 0) = ln 0.75;
    #        H = -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.562335.
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])  # [1, 2, 2]
    labels = torch.tensor([[1, 0]])
    torch.testing.assert_close(
        logprobs_from_logits(logits, labels), torch.tensor([[-math.log(2), math.log(0.75)]])
    )
    h1 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert h1 == pytest.approx(0.562335, abs=1e-6)
    torch.testing.assert_close(entropy_from_logits(logits), torch.tensor([[math.log(2), h1]]))


def test_near_deterministic_logits_are_finite():
    # logits [0, -1000]: p ≈ [1, e^-1000]; log p(0) ≈ 0, log p(1) = -1000, H ≈ 0.
    logits = torch.tensor([[[0.0, -1000.0], [0.0, -1000.0]]])
    labels = torch.tensor([[0, 1]])
    torch.testing.assert_close(logprobs_from_logits(logits, labels), torch.tensor([[0.0, -1000.0]]))
    h = entropy_from_logits(logits)
    assert torch.isfinite(h).all()
    torch.testing.assert_close(h, torch.zeros(1, 2))


def test_match_torch_reference_on_random_inputs():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 11, generator=gen) * 4
    labels = torch.randint(0, 11, (3, 4), generator=gen)
    expected_lp = torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logprobs_from_logits(logits, labels), expected_lp)
    expected_h = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(entropy_from_logits(logits), expected_h)
    assert entropy_from_logits(logits).shape == (3, 4)


def test_logprob_gradient_matches_log_softmax():
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(2, 3, 5, generator=gen)
    labels = torch.randint(0, 5, (2, 3), generator=gen)
    a = base.clone().requires_grad_(True)
    b = base.clone().requires_grad_(True)
    logprobs_from_logits(a, labels).sum().backward()
    torch.log_softmax(b, -1).gather(-1, labels.unsqueeze(-1)).sum().backward()
    # Gradient is onehot(label) - softmax for both formulations.
    torch.testing.assert_close(a.grad, b.grad)


def test_minus_inf_logits_masked_vocab():
    # Vocab entry 1 masked with -inf: p = softmax([0, 1]) over the rest, so
    # H = -(p0 ln p0 + p1 ln p1) with p1 = e/(1+e) = 0.731059 -> H = 0.582203;
    # value and gradient must be finite (no 0 * -inf).
    logits = torch.tensor([[[0.0, float("-inf"), 1.0]]], requires_grad=True)
    h = entropy_from_logits(logits)
    p1 = math.e / (1 + math.e)
    expected = -(p1 * math.log(p1) + (1 - p1) * math.log(1 - p1))
    torch.testing.assert_close(h, torch.tensor([[expected]]))
    h.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert float(logits.grad[0, 0, 1]) == 0.0
    lp = logprobs_from_logits(logits.detach(), torch.tensor([[2]]))
    torch.testing.assert_close(lp, torch.tensor([[math.log(p1)]]))
