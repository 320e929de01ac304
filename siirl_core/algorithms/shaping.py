"""Reward shaping: where an outcome reward sits among the tokens, and penalties on
response lengths."""
from __future__ import annotations

import torch


def outcome_token_rewards(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Each sequence's score on its last generated token, 0 elsewhere: [B] -> [B, R]. The
    last token is the last position with mask != 0, so tool or environment tokens masked
    out in the middle of a multi-turn response (a mask with gaps) do not move it; a row
    with no generated token gets nothing."""
    valid = response_mask != 0  # [B, R]
    last = valid.shape[1] - 1 - valid.flip(-1).long().argmax(-1)  # [B]; R - 1 for an empty row
    out = torch.zeros_like(response_mask)
    rows = torch.arange(len(scores))
    out[rows, last] = torch.where(valid.any(-1), scores.to(out.dtype), torch.zeros_like(out[:, 0]))
    return out


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int, factor: float) -> torch.Tensor:
    """DAPO's soft overlong punishment, [B] -> [B]: 0 up to max_length - buffer, then
    falling linearly to -factor at max_length (a truncated response gets the full -factor)."""
    if not 0 < buffer <= max_length:
        raise ValueError(f"overlong buffer must be in 1..{max_length}; got {buffer}")
    expected = max_length - buffer
    over = (lengths.to(torch.float32) - expected).clamp(min=0)  # [B]
    return -(over / buffer).clamp(max=1.0) * factor
