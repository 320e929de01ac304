"""Forward passes of the sampling loop for Llama-family models (Llama, Qwen2), written
for GRPO groups.

transformers' decode step repeats every prompt's KV cache for its n samples and grows
one [B, H, prompt + t, D] cache per layer by concatenation, then runs a general
attention kernel on a single query. When the loop keeps its autograd graph (the fused
update), every step copies the repeated prompt keys again and the backward pass sums
those copies back: ~10% of the loop's forward and backward time on the benchmark's
`small` model (bench/decode_paths.py).
Here each layer keeps its prompt keys once per prompt, [P, Hkv, W, D], and only the
generated keys per sample; a decode step scores a query against its prompt's keys with
one batched product per group and against its own generated keys with another. The
layers' own modules (projections, norms, MLP, rotary embedding) do everything else, so
the numbers are transformers' up to the order of the attention sums (tests compare
logits and gradients with a plain forward pass).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from siirl_core.rollout.deferred_grads import DeferredGrads

MODEL_TYPES = ("llama", "qwen2")


def grouped_decode_blocker(module) -> str | None:
    """Why `module` must sample through transformers' own forward; None when this path fits."""
    config = getattr(module, "config", None)
    if getattr(config, "model_type", None) not in MODEL_TYPES:
        return f"model type {getattr(config, 'model_type', None)!r} is not one of {MODEL_TYPES}"
    if "sliding_attention" in (getattr(config, "layer_types", None) or ()):
        return "sliding-window attention layers"
    if module.training and getattr(config, "attention_dropout", 0.0):
        return "attention dropout in training mode"
    if hasattr(module, "peft_config"):
        return "LoRA adapters (peft) run their own forward"
    if any(hasattr(p, "ds_tensor") for p in module.parameters()):
        return "ZeRO-3 partitioned parameters (gathered by hooks on the whole model's forward)"
    if not _plain_layers(module):
        return "a projection is not a plain torch.nn.Linear (adapters or quantised layers run their own forward)"
    return None


def _plain_layers(model) -> bool:
    """The decoder applies each projection's weight and bias itself: only exact nn.Linear /
    nn.Embedding modules (no subclass with its own forward) are applied faithfully."""
    base = model.model
    modules = [model.lm_head] + [
        proj for layer in base.layers for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj,
                                                   layer.self_attn.v_proj, layer.self_attn.o_proj,
                                                   layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)]
    return type(base.embed_tokens) is torch.nn.Embedding and all(type(m) is torch.nn.Linear for m in modules)


class GroupedDecoder:
    """prefill(prompts) then step(tokens) per generated token; both return the next-token
    logits, [P * n, V] rows prompt-major (prompt i's samples are rows i*n .. i*n+n-1)."""

    def __init__(self, model, n: int):
        self.model, self.base, self.n = model, model.model, n
        self.grads = DeferredGrads(self.base.embed_tokens.padding_idx)
        layers = self.base.layers
        self.prompt_kv: list[tuple[torch.Tensor, torch.Tensor]] = [None] * len(layers)
        self.gen_kv: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(layers)
        self.prompt_pad = None  # [P, 1, 1, W] True at left padding

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        width = ids.shape[1]
        keep = mask.bool()
        causal = torch.ones(width, width, dtype=torch.bool, device=ids.device).tril()
        # A padding position attends to itself only: finite values, never read by a real token.
        allowed = (causal & keep[:, None, :]) | torch.eye(width, dtype=torch.bool, device=ids.device)
        self.prompt_pad = ~keep[:, None, None, :]
        hidden = self._layers(ids, positions, lambda i, q, k, v, attn: self._prefill_attention(
            i, q, k, v, attn, allowed[:, None]))
        return self._logits(hidden[:, -1:]).repeat_interleave(self.n, 0)

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = self._layers(tokens[:, None], positions[:, None], self._step_attention)
        return self._logits(hidden)

    def _layers(self, ids, positions, attend) -> torch.Tensor:
        linear = self.grads.linear
        x = self.grads.embedding(self.base.embed_tokens, ids)
        cos, sin = self.base.rotary_emb(x, positions)
        for i, layer in enumerate(self.base.layers):
            attn, mlp = layer.self_attn, layer.mlp
            rows, seq = x.shape[:2]
            h = layer.input_layernorm(x)
            q, k, v = (linear(proj, h).view(rows, seq, -1, attn.head_dim).transpose(1, 2)
                       for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            x = x + linear(attn.o_proj, attend(i, q, k, v, attn).reshape(rows, seq, -1))
            h = layer.post_attention_layernorm(x)
            x = x + linear(mlp.down_proj, mlp.act_fn(linear(mlp.gate_proj, h)) * linear(mlp.up_proj, h))
        return x

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.grads.linear(self.model.lm_head, self.base.norm(hidden))[:, -1].float()

    def _prefill_attention(self, i, q, k, v, attn, allowed) -> torch.Tensor:
        self.prompt_kv[i] = (k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=attn.scaling,
                                             enable_gqa=k.shape[1] != q.shape[1])
        return out.transpose(1, 2)  # [P, W, H, D]

    def _step_attention(self, i, q, k, v, attn) -> torch.Tensor:
        """q, k, v: [B, H(kv), 1, D] for one new token per sample -> [B, 1, H, D]."""
        kp, vp = self.prompt_kv[i]
        prompts, kv_heads, width, dim = kp.shape
        rows, heads, n = q.shape[0], q.shape[1], self.n
        group = heads // kv_heads
        if self.gen_kv[i] is not None:
            k, v = (torch.cat([old, new], 2) for old, new in zip(self.gen_kv[i], (k, v)))
        self.gen_kv[i] = (k, v)
        # Against the prompt: each prompt's n samples (x GQA group) are one batch of queries.
        qp = q.reshape(prompts, n, kv_heads, group, dim).transpose(1, 2).reshape(prompts, kv_heads, n * group, dim)
        prompt_scores = torch.matmul(qp, kp.transpose(-1, -2)).masked_fill(self.prompt_pad, float("-inf"))
        qg = q.reshape(rows, kv_heads, group, dim)
        own_scores = _batched_products(qg, k.transpose(-1, -2))  # [B, Hkv, group, t]
        prompt_scores = (prompt_scores.view(prompts, kv_heads, n, group, width).transpose(1, 2)
                         .reshape(rows, kv_heads, group, width))
        scores = torch.cat([prompt_scores, own_scores], -1) * attn.scaling
        probs = torch.softmax(scores, -1, dtype=torch.float32).to(q.dtype)
        prompt_probs, own_probs = probs.split([width, k.shape[2]], -1)
        prompt_probs = (prompt_probs.reshape(prompts, n, kv_heads, group, width).transpose(1, 2)
                        .reshape(prompts, kv_heads, n * group, width))
        from_prompt = (torch.matmul(prompt_probs, vp).view(prompts, kv_heads, n, group, dim).transpose(1, 2)
                       .reshape(rows, kv_heads, group, dim))
        out = from_prompt + _batched_products(own_probs, v)  # [B, Hkv, group, D]
        return out.reshape(rows, 1, heads, dim)


def _batched_products(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b over many tiny matrices ([B, H, m, k] @ [B, H, k, n] with one sample's
    generated tokens as k or n). A batched product pays per-matrix overhead on the CPU
    (~1 ms a call for the 768 matrices of the benchmark's `small` batch); while the
    tokens are few, one broadcast multiply-and-sum avoids it."""
    if a.device.type != "cpu" or a.shape[-1] * b.shape[-1] * a.shape[-2] > 64 * 32:
        return torch.matmul(a, b)
    return (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(-2)
