"""Reduce a per-token loss matrix [B, T] to a scalar under a response mask."""

from __future__ import annotations

import torch

from .registry import LOSS_AGG_MODES


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of x over positions where mask != 0, weighted by mask.

    torch.where (rather than x * mask alone) keeps inf/NaN sitting in padding
    from turning the sum into NaN.
    """
    mask = mask.to(x.dtype)
    x = torch.where(mask != 0, x, torch.zeros_like(x))
    return (x * mask).sum() if dim is None else (x * mask).sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over positions where mask != 0; 0 (not NaN) where the mask is empty."""
    num = masked_sum(x, mask, dim)
    den = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim=dim)
    # Where den == 0 the numerator is already 0, so dividing by 1 yields 0.
    return num / torch.where(den != 0, den, torch.ones_like(den))


@LOSS_AGG_MODES.register("token-mean")
def agg_token_mean(loss_mat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over all masked tokens / number of masked tokens in the batch."""
    return masked_mean(loss_mat, mask)


def _nonempty_seq_mean(seq_losses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # Sequences with no masked tokens (e.g. truncated to zero response) are
    # excluded from the mean instead of counting as zero-loss sequences,
    # which would silently shrink the loss with the number of empty rows.
    has_tokens = (mask != 0).any(dim=-1)  # [B]
    return masked_mean(seq_losses, has_tokens)


@LOSS_AGG_MODES.register("seq-mean-token-mean")
def agg_seq_mean_token_mean(loss_mat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over non-empty sequences of each sequence's masked token mean."""
    seq_losses = masked_mean(loss_mat, mask, dim=-1)  # [B]
    return _nonempty_seq_mean(seq_losses, mask)


@LOSS_AGG_MODES.register("seq-mean-token-sum")
def agg_seq_mean_token_sum(loss_mat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over non-empty sequences of each sequence's masked token sum."""
    seq_losses = masked_sum(loss_mat, mask, dim=-1)  # [B]
    return _nonempty_seq_mean(seq_losses, mask)


def aggregate_loss(loss_mat: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Scalar loss from loss_mat [B, T] and mask [B, T] with a LOSS_AGG_MODES mode."""
    if loss_mat.shape != mask.shape or loss_mat.dim() != 2:
        raise ValueError(
            f"loss_mat and mask must both be [B, T]; got {tuple(loss_mat.shape)} and {tuple(mask.shape)}"
        )
    return LOSS_AGG_MODES.get(mode)(loss_mat, mask)
