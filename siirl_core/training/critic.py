"""The value model for PPO with GAE: the policy's architecture with a scalar head,
trained by its own DeepSpeed engine."""
from __future__ import annotations

import torch

from siirl_core.training.actor import DeepSpeedActor
from siirl_core.training.logprobs import in_micro_batches, response_outputs
from siirl_core.training.micro_batches import MicroBatching


def build_value_model(model_path: str, init_from_policy: bool) -> torch.nn.Module:
    """Token-classification head with one label = a value per position. The backbone
    starts from the policy's weights (or fresh, with init_from_policy=False); the head is new."""
    from transformers import AutoConfig, AutoModelForTokenClassification

    if init_from_policy:
        return AutoModelForTokenClassification.from_pretrained(model_path, num_labels=1, torch_dtype=torch.float32)
    config = AutoConfig.from_pretrained(model_path, num_labels=1)
    return AutoModelForTokenClassification.from_config(config, torch_dtype=torch.float32)


def response_values(module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int,
                    packed: bool = False) -> torch.Tensor:
    """V(s_t) for each response token t: the value at the position before it. [B, P+R] -> [B, R],
    on the module's device."""
    return response_outputs(module, input_ids, attention_mask, response_len, packed)[..., 0].float()


class Critic:
    def __init__(self, model_path: str, *, init_from_policy: bool, lr: float, zero_stage: int,
                 micro_batch_size: int, grad_accum: int, world_size: int, grad_clip: float, bf16: bool,
                 gradient_checkpointing: bool = False, max_skipped_steps: int = 3, offload: str = "none"):
        self.actor = DeepSpeedActor(build_value_model(model_path, init_from_policy), lr=lr, weight_decay=0.0,
                                    warmup_steps=0, total_steps=1, schedule="constant", zero_stage=zero_stage,
                                    micro_batch_size=micro_batch_size, grad_accum=grad_accum,
                                    world_size=world_size, grad_clip=grad_clip, bf16=bf16,
                                    gradient_checkpointing=gradient_checkpointing,
                                    max_skipped_steps=max_skipped_steps, offload=offload)

    @property
    def engine(self):
        return self.actor.engine

    @torch.no_grad()
    def values(self, input_ids, attention_mask, response_len: int, batching: MicroBatching) -> torch.Tensor:
        """V(s_t) of every response token, [B, R] on the CPU."""
        return in_micro_batches(
            lambda ids, mask: response_values(self.engine, ids, mask, response_len, batching.packed),
            input_ids, attention_mask, batching)
