"""The policy as a DeepSpeed ZeRO engine: build, update on a batch, export weights."""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Iterator

import torch

from siirl_core.algorithms import POLICY_LOSSES, aggregate_loss, kl_penalty, masked_mean
from siirl_core.training.safe_load import use_restricted_loading


def lr_lambda(warmup_steps: int, total_steps: int, schedule: str):
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine
    return factor


def _disable_cpu_shm_comm() -> None:
    """DeepSpeed's CPU shared-memory all-reduce serves inference tensor parallelism
    only; training uses torch.distributed. It JIT-builds with g++ at first start and
    leaves a 69 MB /dev/shm buffer per rank whenever a process is killed (6 GB piled
    up here in a day of tests), so it is switched off."""
    import deepspeed.ops
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False


def deepspeed_config(zero_stage: int, micro_batch_size: int, grad_accum: int, world_size: int,
                     grad_clip: float, bf16: bool) -> dict:
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch_size * grad_accum * world_size,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage},
        # A plain torch AdamW: DeepSpeed's fused CPU Adam needs a compiled op.
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class DeepSpeedActor:
    def __init__(self, module: torch.nn.Module, *, lr: float, weight_decay: float, warmup_steps: int,
                 total_steps: int, schedule: str, zero_stage: int, micro_batch_size: int,
                 grad_accum: int, world_size: int, grad_clip: float, bf16: bool = False):
        import deepspeed

        if not torch.cuda.is_available():
            _disable_cpu_shm_comm()
        optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup_steps, total_steps, schedule))
        config = deepspeed_config(zero_stage, micro_batch_size, grad_accum, world_size, grad_clip, bf16)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=scheduler, config=config)
        use_restricted_loading(self.engine)
        self.zero_stage = zero_stage
        self.grad_accum = grad_accum

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    def gathered(self):
        """Context in which every parameter is whole (ZeRO-3 shards them)."""
        if self.zero_stage != 3:
            return nullcontext()
        import deepspeed
        return deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None)

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        with self.gathered():
            state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        yield from state.items()

    def total_parameters(self) -> int:
        # ZeRO-3 replaces each parameter by an empty placeholder; ds_numel is its full size.
        return sum(getattr(p, "ds_numel", p.numel()) for p in self.module.parameters())

    def local_parameters(self) -> int:
        """Parameter elements this rank holds: its shard under ZeRO-3, everything otherwise."""
        return sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in self.module.parameters())

    def micro_step(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()  # DeepSpeed only steps the optimizer at the accumulation boundary

    def grad_norm(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def set_base_lr(self, lr: float) -> None:
        """Make `lr` the schedule's base rate (a restored checkpoint brings its own; the
        configured one wins, so resuming or retraining with a new trainer.lr uses it)."""
        sched = self.scheduler
        sched.base_lrs = [lr for _ in sched.base_lrs]
        for group, factor in zip(sched.optimizer.param_groups, sched.lr_lambdas):
            group["lr"] = lr * factor(sched.last_epoch)

    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


def policy_loss_terms(log_probs, entropy, old_log_probs, ref_log_probs, advantages, response_mask, algo,
                      is_weights=None, kl_log_probs=None) -> tuple:
    """Policy loss + KL + entropy bonus for one micro-batch; algo is the AlgorithmConfig.
    kl_log_probs: what the KL compares with ref_log_probs, when not the sampled tokens'
    log-probs (whole-vocabulary [B, T, V] for the "full" estimator)."""
    loss_fn = POLICY_LOSSES.get(algo.policy_loss)
    pg_loss, metrics = loss_fn(log_probs, old_log_probs, advantages, response_mask,
                               clip_ratio_low=algo.clip_ratio_low, clip_ratio_high=algo.clip_ratio_high,
                               clip_ratio_c=algo.clip_ratio_c, loss_agg_mode=algo.loss_agg_mode,
                               is_weights=is_weights)
    loss = pg_loss
    metrics = {f"actor/{k}": v for k, v in metrics.items()}
    metrics["actor/pg_loss"] = pg_loss.detach()
    if ref_log_probs is not None and algo.kl_coef > 0:
        policy = log_probs if kl_log_probs is None else kl_log_probs
        kl = aggregate_loss(kl_penalty(policy, ref_log_probs, algo.kl_estimator), response_mask,
                            algo.loss_agg_mode)
        loss = loss + algo.kl_coef * kl
        metrics["actor/kl"] = kl.detach()
    ent = masked_mean(entropy, response_mask)
    if algo.entropy_coef:
        loss = loss - algo.entropy_coef * aggregate_loss(entropy, response_mask, algo.loss_agg_mode)
    metrics["actor/entropy"] = ent.detach()
    return loss, metrics
