"""What a rank trains, each with its own files in a checkpoint: policies (a single-agent
rank owns one, a multi-agent rank one per trained policy id) and other engines (the critic).
A policy is everything a rank keeps of it: training engine, tokenizer, rollout engine,
checkpoint folders and export."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


def sync_rollout(actor, rollout) -> None:
    """The rollout engine samples from the actor's current weights: the merged weights by
    name, or, for an engine that applies LoRA adapters itself (vLLM with
    rollout.lora_sync=adapters), the adapter files alone."""
    if getattr(rollout, "takes_adapters", False):
        from siirl_core.training.lora import save_adapter

        with actor.gathered():
            rollout.sync_adapter(lambda folder: save_adapter(actor.module, folder))
    else:
        rollout.sync_weights(actor.named_weights())


@dataclass
class TrainedEngine:
    """A DeepSpeed actor (module, optimizer, LR schedule) with its base learning rate and
    the folder of its state inside a checkpoint."""

    actor: Any  # training.actor.DeepSpeedActor
    lr: float
    engine_dir: str  # relative to a checkpoint: e.g. "engine", "critic", "policies/<id>/engine"

    def stage(self, staging: str, rank: int) -> None:
        """This rank's engine shards into a staging folder (never non-finite weights)."""
        from siirl_core.training.actor import check_finite_weights

        with self.actor.gathered():
            check_finite_weights(dict(self.actor.module.named_parameters()), f"checkpoint files {self.engine_dir}/")
        # With LoRA only the adapters (and their optimizer state) are saved: the frozen base
        # weights are the model directory's.
        self.actor.engine.save_checkpoint(os.path.join(staging, self.engine_dir), tag="state",
                                          exclude_frozen_parameters=self.actor.adapters_only)

    def owns(self, rel: str) -> bool:
        """Whether a checkpoint file (relative path) is part of this engine's state."""
        return rel.startswith(self.engine_dir + "/")

    def load(self, staging: str) -> None:
        """Engine, optimizer and LR schedule from a staged checkpoint; the base learning rate
        is the configured one (a resumed run may change it)."""
        self.actor.engine.load_checkpoint(os.path.join(staging, self.engine_dir), tag="state",
                                          load_optimizer_states=True, load_lr_scheduler_states=True,
                                          load_module_strict=not self.actor.adapters_only)
        self.actor.set_base_lr(self.lr)


@dataclass
class TrainedPolicy(TrainedEngine):
    """A trained language-model policy: an engine plus its tokenizer and the rollout engine
    that samples from it, exported as an HF directory (`hf_dir` inside a checkpoint) beside
    its engine state."""

    name: str
    tokenizer: Any
    hf_dir: str  # relative to a checkpoint: e.g. "policy", "policies/<id>/hf"
    rollout: Any  # rollout.base.RolloutEngine
    export_subdir: str = ""  # where export(out_dir) puts it: out_dir itself, or out_dir/<id> in a team

    def sync_rollout(self) -> None:
        """The rollout engine samples from the trained weights again (after a restore)."""
        sync_rollout(self.actor, self.rollout)

    def stage(self, staging: str, rank: int) -> None:
        """This rank's engine shards and (rank 0) the HF export into a staging folder."""
        super().stage(staging, rank)
        self.export(os.path.join(staging, self.hf_dir), rank)

    def export(self, out_dir: str, rank: int) -> str:
        """An HF-format directory (loads in transformers and vLLM). Every rank must call it
        (ZeRO-3 gathers parameters collectively); rank 0 writes."""
        from siirl_core.training.actor import check_finite_weights

        state = dict(self.actor.named_weights())
        check_finite_weights(state, f"the policy export {out_dir}")
        if rank == 0:
            os.makedirs(out_dir, exist_ok=True)
            module = self.actor.module
            if self.actor.adapters_only:  # merged weights in the base model's format, adapters beside
                from siirl_core.training.lora import save_adapter

                save_adapter(module, os.path.join(out_dir, "adapter"))
                module = module.get_base_model()
            module.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
            self.tokenizer.save_pretrained(out_dir)
        return out_dir

