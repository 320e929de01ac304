"""Token log-probs and entropies from logits [B, T, V], without a log_softmax copy."""

from __future__ import annotations

import torch


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) = logit[label] - logsumexp(logits): [B, T, V], [B, T] -> [B, T].

    Gathering one logit and subtracting logsumexp avoids materialising the full
    [B, T, V] log_softmax (V is ~150k for modern LLMs). Computed in the logits'
    dtype: pass float32 logits for float32 precision.
    """
    picked = logits.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)  # [B, T]
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last dim: [B, T, V] -> [B, T].

    H = logsumexp(z) - sum_v softmax(z)_v * z_v, which stays finite for very
    negative logits where p * log p would evaluate 0 * -inf.
    """
    probs = torch.softmax(logits, dim=-1)
    # Zero-probability entries (e.g. vocab masked with -inf) contribute 0;
    # without the where, 0 * -inf would make the value and gradient NaN.
    safe_logits = torch.where(probs > 0, logits, torch.zeros_like(logits))
    return torch.logsumexp(logits, dim=-1) - (probs * safe_logits).sum(dim=-1)
