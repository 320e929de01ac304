"""The signalling bonus: the mutual information between what an agent sees (its prompt)
and its message's first token, estimated over a batch of its turns.

A speaker that sends one message for two observations (pooling) leaves the team stuck:
a listener cannot tell the two apart, and a fresh message fails until the listener
learns it, so no single agent's gradient leads out. Rewarding I(prompt; message) =
H(mean_i p_i) - mean_i H(p_i) pushes the speaker towards messages its other
observations do not use, and towards one message per observation; at a one-to-one
mapping it is at its maximum, so it does not pull against the team's reward there
(positive signalling, Eccles et al. 2019, "Biases for emergent communication in
multi-agent reinforcement learning").
"""
from __future__ import annotations

import torch

from siirl_core.distributed import all_reduce_sum


def mutual_information(logp: torch.Tensor) -> torch.Tensor:
    """I(prompt; token) in nats from each turn's log-probabilities logp [B, V] (finite,
    masked tokens very negative), each turn's prompt equally likely."""
    return _entropy_of(logp.exp().mean(0)) - entropy(logp).mean()


def entropy(logp: torch.Tensor) -> torch.Tensor:
    """[B, V] log-probabilities -> [B] entropies."""
    return -(logp.exp() * logp).sum(-1)


def _entropy_of(probs: torch.Tensor) -> torch.Tensor:
    """Entropy of one distribution [V] given as probabilities (0 log 0 = 0)."""
    return -(probs * _safe_log(probs)).sum()


def _safe_log(probs: torch.Tensor) -> torch.Tensor:
    return torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))


def signalling_surrogate(logp: torch.Tensor, marginal: torch.Tensor) -> torch.Tensor:
    """Per-turn terms [B] whose mean over all N turns of a batch has the gradient of
    mutual_information over those N turns, given the batch's marginal [V] (the mean of
    the N turns' probabilities, computed beforehand without gradient), so that each
    micro-batch needs only its own rows: dH(marginal)/dp_i = -(log marginal + 1) / N."""
    return -(logp.exp() * (_safe_log(marginal) + 1)).sum(-1) - entropy(logp)


def pooled_statistics(logp: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """Over every rank's rows of logp [N_rank, V]: the marginal [V] (mean probabilities),
    the mutual information in nats, and the number of rows."""
    count = torch.tensor([float(len(logp))], dtype=logp.dtype)
    total = all_reduce_sum(torch.cat([logp.exp().sum(0), entropy(logp).sum()[None], count]))
    marginal = total[:-2] / total[-1]
    return marginal, float(_entropy_of(marginal) - total[-2] / total[-1]), int(total[-1])
