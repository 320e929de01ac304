"""Reward shaping on response lengths."""
from __future__ import annotations

import torch


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int, factor: float) -> torch.Tensor:
    """DAPO's soft overlong punishment, [B] -> [B]: 0 up to max_length - buffer, then
    falling linearly to -factor at max_length (a truncated response gets the full -factor)."""
    if not 0 < buffer <= max_length:
        raise ValueError(f"overlong buffer must be in 1..{max_length}; got {buffer}")
    expected = max_length - buffer
    over = (lengths.to(torch.float32) - expected).clamp(min=0)  # [B]
    return -(over / buffer).clamp(max=1.0) * factor
