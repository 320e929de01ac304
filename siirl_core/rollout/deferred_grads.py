"""Weight gradients of a sampling loop, computed once per weight instead of once per step.

A sampling loop that keeps its autograd graph (the fused update) applies every weight
once per decode step. Plain autograd then computes one weight gradient per step, each a
product with only the batch's rows as its inner dimension, and adds them up one by one.
Here the steps' backward passes only hand their inputs and output gradients to the
weight; when all of them are in, the weight's gradient is one product over all rows of
all steps (or one index_add for an embedding). It reaches the parameter through
autograd as usual, so DeepSpeed's gradient hooks and accumulation see one gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class _Gate(torch.autograd.Function):
    """Passes the weight through; its backward runs after every use's backward (autograd
    orders it after all of them) and turns their stash into the weight's gradient."""

    @staticmethod
    def forward(ctx, weight, stash, padding_idx):
        ctx.stash, ctx.padding_idx, ctx.shape = stash, padding_idx, weight.shape
        ctx.set_materialize_grads(False)  # the uses pass no gradient through here
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, _):
        grad = _weight_grad(ctx.stash, ctx.shape, ctx.padding_idx) if ctx.stash else None
        ctx.stash.clear()  # a second backward pass (retain_graph) stashes again
        return grad, None, None


def _weight_grad(stash: list, shape, padding_idx) -> torch.Tensor:
    """stash: ("linear", input, output grad) and ("embedding", ids, output grad) entries;
    a tied embedding / LM head weight gets both kinds."""
    linear = [(x, dy) for kind, x, dy in stash if kind == "linear"]
    lookups = [(ids, dy) for kind, ids, dy in stash if kind == "embedding"]
    grad = None
    if linear:
        xs, dys = zip(*linear)
        grad = torch.cat(dys).t() @ torch.cat(xs)
    if lookups:
        ids = torch.cat([i.reshape(-1) for i, _ in lookups])
        rows = torch.cat([d.reshape(-1, d.shape[-1]) for _, d in lookups])
        table = torch.zeros(shape, dtype=rows.dtype, device=rows.device).index_add_(0, ids, rows)
        if padding_idx is not None:  # nn.Embedding never updates its padding row
            table[padding_idx] = 0
        grad = table if grad is None else grad + table
    return grad


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, stash):
        ctx.save_for_backward(x, weight)
        ctx.stash = stash
        return x @ weight.t()

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        ctx.stash.append(("linear", x, dy))
        return dy @ weight, None, None


class _Embedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids, weight, stash):
        ctx.ids, ctx.stash = ids, stash  # integer ids: no autograd history to keep
        return F.embedding(ids, weight)

    @staticmethod
    def backward(ctx, dy):
        ctx.stash.append(("embedding", ctx.ids, dy))
        return None, None, None


class DeferredGrads:
    """Hands out each weight's gated alias once per sampling loop and applies it."""

    def __init__(self, padding_idx=None):
        self.padding_idx = padding_idx  # the embedding's: its row never gets a gradient
        self._gated: dict[int, tuple[torch.Tensor, list]] = {}

    def _gate(self, weight: torch.Tensor):
        if id(weight) not in self._gated:
            stash: list = []
            self._gated[id(weight)] = (_Gate.apply(weight, stash, self.padding_idx), stash)
        return self._gated[id(weight)]

    @staticmethod
    def _deferred(weight: torch.Tensor) -> bool:
        return torch.is_grad_enabled() and weight.requires_grad

    def linear(self, proj: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        if not self._deferred(proj.weight):
            return proj(x)
        weight, stash = self._gate(proj.weight)
        y = _Linear.apply(x.reshape(-1, x.shape[-1]), weight, stash).view(*x.shape[:-1], -1)
        return y if proj.bias is None else y + proj.bias

    def embedding(self, embed: torch.nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        if not self._deferred(embed.weight):
            return embed(ids)
        weight, stash = self._gate(embed.weight)
        return _Embedding.apply(ids, weight, stash)
