"""The policy as a DeepSpeed ZeRO engine: build, update on a batch, export weights."""
from __future__ import annotations

import logging
import math
from contextlib import nullcontext
from typing import Iterator

import torch

from siirl_core.algorithms import POLICY_LOSSES, aggregate_loss, kl_penalty, masked_mean
from siirl_core.training.lora import has_adapters, merged_state
from siirl_core.training.safe_load import use_restricted_loading

log = logging.getLogger(__name__)


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
                     grad_clip: float, bf16: bool, offload: str = "none") -> dict:
    zero: dict = {"stage": zero_stage}
    if offload in ("optimizer", "all"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offload == "all":
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch_size * grad_accum * world_size,
        "gradient_clipping": grad_clip,
        "zero_optimization": zero,
        # A plain torch AdamW: DeepSpeed's fused CPU Adam needs a compiled op (with an offloaded
        # optimizer the AdamW steps the CPU copy).
        "zero_allow_untested_optimizer": True,
        **({"zero_force_ds_cpu_optimizer": False} if offload != "none" else {}),
        # bf16 ZeRO-1/2 skip a step with a non-finite gradient only with this on (DeepSpeed's
        # default; fp32 and ZeRO-3 always check): explicit, since skipping is relied on.
        "bf16": {"enabled": bf16, "check_grad_overflow": bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def effective_zero_stage(zero_stage: int, world_size: int, bf16: bool) -> int:
    """ZeRO stages 1 and 2 shard optimizer state and gradients across ranks; on one rank
    they shard nothing but still keep a flat fp32 copy of every parameter and copy it back
    after each step (~15% of an iteration of the `small` benchmark model on the CPU), so one
    fp32 rank runs stage 0. Stage 3 is kept, and so is bf16 (GPU) training: DeepSpeed's
    stage-0 bf16 path accumulates gradients in bf16 and has not run on a GPU here."""
    return 0 if world_size == 1 and zero_stage in (1, 2) and not bf16 else zero_stage


class NonFiniteUpdate(FloatingPointError):
    """More optimizer steps in a row than trainer.max_skipped_steps had a NaN or infinite
    loss or gradient (each was skipped), or weights to be written are not finite: the run
    stops; a replay would compute the same."""


def check_finite_weights(state: dict, what: str) -> None:
    """Refuse to write non-finite weights anywhere (checkpoint, export)."""
    bad = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise NonFiniteUpdate(f"not writing {what}: {len(bad)} tensors hold NaN or infinite values "
                              f"(first: {bad[0]})")


def enable_gradient_checkpointing(module: torch.nn.Module) -> None:
    """Recompute each decoder layer in the backward pass (transformers' non-reentrant
    checkpointing). transformers checkpoints a layer only while the layer is in training
    mode, and the policies here run in eval mode (no dropout): before every forward pass a
    hook marks the checkpointing layers themselves (not their children, so no dropout
    turns on) as training exactly when autograd is recording, i.e. in the update, not in
    no-grad passes such as sampling or the old log-probs."""
    module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = [m for m in module.modules() if m is not module and getattr(m, "gradient_checkpointing", False)]
    if not layers:
        raise ValueError(f"{type(module).__name__} has no layers that support gradient checkpointing")

    def engage(_module, _args):
        for layer in layers:
            layer.training = torch.is_grad_enabled()

    module.register_forward_pre_hook(engage)


class DeepSpeedActor:
    def __init__(self, module: torch.nn.Module, *, lr: float, weight_decay: float, warmup_steps: int,
                 total_steps: int, schedule: str, zero_stage: int, micro_batch_size: int,
                 grad_accum: int, world_size: int, grad_clip: float, bf16: bool = False,
                 gradient_checkpointing: bool = False, max_skipped_steps: int = 3, offload: str = "none"):
        import deepspeed

        if offload != "none" and not torch.cuda.is_available():
            raise ValueError(f"trainer.offload={offload} moves ZeRO's state from the GPU to CPU memory, and this "
                             "rank has no GPU (its weights are in CPU memory already): use trainer.offload=none")

        if not torch.cuda.is_available():
            _disable_cpu_shm_comm()
        if gradient_checkpointing:
            enable_gradient_checkpointing(module)
        # Only what trains (with LoRA: the adapters) has optimizer state.
        trainable = [p for p in module.parameters() if p.requires_grad]
        # fused: one pass over each tensor instead of one per Adam operation (~3x faster step on the CPU)
        optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay, fused=True)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup_steps, total_steps, schedule))
        zero_stage = effective_zero_stage(zero_stage, world_size, bf16)
        # DeepSpeed's stage-0 fp32 path clips gradients but drops their norm: clip here instead.
        self.own_clipping = zero_stage == 0 and not bf16
        self.grad_clip, self._grad_norm = grad_clip, float("nan")
        config = deepspeed_config(zero_stage, micro_batch_size, grad_accum, world_size,
                                  0.0 if self.own_clipping else grad_clip, bf16, offload)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=scheduler, config=config)
        use_restricted_loading(self.engine)
        if world_size == 1 and zero_stage == 0:
            # Nothing to all-reduce on one rank, yet DeepSpeed would flatten every gradient
            # into buckets, reduce them over the 1-process group and copy them back.
            self.engine.enable_backward_allreduce = False
        self.zero_stage = zero_stage
        self.grad_accum = grad_accum
        self.max_skipped_steps = max_skipped_steps
        self.skipped_steps = self.skipped_in_a_row = 0
        self.adapters_only = has_adapters(module)  # LoRA: the base is frozen, only adapters train

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
        """The policy's weights under the base model's names (with LoRA: adapters merged)."""
        with self.gathered():
            if self.adapters_only:
                state = merged_state(self.module)
            else:
                state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        yield from state.items()

    def total_parameters(self) -> int:
        # ZeRO-3 replaces each parameter by an empty placeholder; ds_numel is its full size.
        return sum(getattr(p, "ds_numel", p.numel()) for p in self.module.parameters())

    def local_parameters(self) -> int:
        """Parameter elements this rank holds: its shard under ZeRO-3, everything otherwise."""
        return sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in self.module.parameters())

    def accumulate(self, contribution: torch.Tensor, boundary: bool | None = None) -> None:
        """Back-propagate a micro-batch's `contribution` to the optimizer step's loss (its
        mean loss times its share, training/micro_batches.loss_shares). DeepSpeed divides
        every micro-batch's loss by its configured accumulation steps: multiplied back, the
        gradients add up to the step's loss. `boundary` (True on the step's last
        micro-batch, False before) when the number of micro-batches varies; None: DeepSpeed
        counts to trainer's grad_accum."""
        if boundary is not None:
            self.engine.set_gradient_accumulation_boundary(boundary)
        self.micro_step(contribution * self.grad_accum)

    def micro_step(self, loss: torch.Tensor) -> None:
        """Back-propagate one micro-batch; at the accumulation boundary, step the optimizer
        unless the step's gradient norm is NaN or infinite. A non-finite loss is
        back-propagated like any other (every rank must join the same collectives); its
        gradient makes the norm non-finite, and the whole step is skipped: no weight or
        optimizer moment moves. Under ZeRO DeepSpeed skips it (the norm is global, so
        every rank agrees); on one stage-0 rank the clipping below does."""
        self.engine.backward(loss)  # gradients are all-reduced at the accumulation boundary
        boundary = self.engine.is_gradient_accumulation_boundary()
        own_skip = False
        if self.own_clipping and boundary:
            params = [p for p in self.module.parameters() if p.grad is not None]
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
            own_skip = not bool(torch.isfinite(norm))
            if own_skip:
                for p in params:
                    p.grad = None  # AdamW leaves a parameter without a gradient (and its moments) alone
            elif self.grad_clip > 0:
                torch.nn.utils.clip_grads_with_norm_(params, self.grad_clip, norm)
            self._grad_norm = float(norm)
        self.engine.step()  # DeepSpeed only steps the optimizer at the accumulation boundary
        if boundary:
            self._count_skip(own_skip or not self.engine.was_step_applied())

    def _count_skip(self, skipped: bool) -> None:
        if not skipped:
            self.skipped_in_a_row = 0
            return
        self.skipped_steps += 1
        self.skipped_in_a_row += 1
        log.warning("optimizer step skipped: NaN or infinite loss or gradient (%d in a row; the run stops after "
                    "trainer.max_skipped_steps=%d)", self.skipped_in_a_row, self.max_skipped_steps)
        if self.skipped_in_a_row > self.max_skipped_steps:
            raise NonFiniteUpdate(
                f"{self.skipped_in_a_row} optimizer steps in a row had a NaN or infinite loss or gradient and were "
                f"skipped (trainer.max_skipped_steps={self.max_skipped_steps}): the weights are those of the last "
                "good step. Check the reward values, custom pipeline nodes and the learning rate")

    def grad_norm(self) -> float:
        if self.own_clipping:
            return self._grad_norm
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
                      is_weights=None, kl_log_probs=None, entropy_mask=None) -> tuple:
    """Policy loss + KL + entropy bonus for one micro-batch; algo is the AlgorithmConfig.
    kl_log_probs: what the KL compares with ref_log_probs, when not the sampled tokens'
    log-probs (whole-vocabulary [B, T, V] for the "full" estimator). entropy_mask: the
    tokens whose entropy was computed, for its metric (default: response_mask)."""
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
    ent = masked_mean(entropy, response_mask if entropy_mask is None else entropy_mask)
    if algo.entropy_coef:
        loss = loss - algo.entropy_coef * aggregate_loss(entropy, response_mask, algo.loss_agg_mode)
    metrics["actor/entropy"] = ent.detach()
    return loss, metrics
