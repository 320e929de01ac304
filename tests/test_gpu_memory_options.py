"""The GPU memory options (trainer.offload, rollout.sleep_during_update) as far as a CPU
can check them: the DeepSpeed configuration they produce (by hand), the settings that
cannot work refused at config time naming the keys, and a rank without a GPU refusing
them before it builds anything. bench/gpu.sh runs them on a GPU."""
import pytest
import torch

from siirl_core.compose import compose_config
from siirl_core.config import ConfigError
from siirl_core.training.actor import deepspeed_config


def test_offload_adds_deepspeeds_offload_sections():
    plain = deepspeed_config(3, 8, 2, 1, 1.0, True)
    assert plain["zero_optimization"] == {"stage": 3} and "zero_force_ds_cpu_optimizer" not in plain
    optimizer = deepspeed_config(2, 8, 2, 1, 1.0, True, offload="optimizer")
    assert optimizer["zero_optimization"] == {"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": True}}
    everything = deepspeed_config(3, 8, 2, 1, 1.0, True, offload="all")
    assert everything["zero_optimization"] == {"stage": 3,
                                               "offload_optimizer": {"device": "cpu", "pin_memory": True},
                                               "offload_param": {"device": "cpu", "pin_memory": True}}
    # siirl's torch AdamW steps the offloaded state (DeepSpeed's CPU Adam is a compiled op).
    assert everything["zero_force_ds_cpu_optimizer"] is False and everything["zero_allow_untested_optimizer"]


@pytest.mark.parametrize("overrides, message", [
    (["trainer.offload=disk"], "trainer.offload"),
    (["trainer.offload=optimizer", "trainer.zero_stage=0"], "trainer.offload=optimizer moves ZeRO's optimizer state "
                                                              "to CPU memory: it needs trainer.zero_stage 1, 2 or 3"),
    (["trainer.offload=all"], "trainer.offload=all also offloads the parameters, which only ZeRO-3 partitions: "
                              "set trainer.zero_stage=3 (got 2)"),
    (["rollout=hf", "rollout.sleep_during_update=true"], "rollout.sleep_during_update puts vLLM to sleep during the "
                                                         "update; rollout.backend=hf"),
])
def test_impossible_memory_options_are_refused_naming_the_keys(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compose_config(overrides)
    compose_config(["trainer.offload=all", "trainer.zero_stage=3", "rollout.sleep_during_update=true"])  # allowed


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a rank without a GPU")
def test_a_rank_without_a_gpu_refuses_them_before_building_anything():
    from siirl_core.rollout.vllm_engine import VLLMRollout
    from siirl_core.training.actor import DeepSpeedActor

    with pytest.raises(ValueError, match="trainer.offload=optimizer moves ZeRO's state from the GPU to CPU memory, and "
                                         "this rank has no GPU"):
        DeepSpeedActor(torch.nn.Linear(2, 2), lr=1e-3, weight_decay=0.0, warmup_steps=0, total_steps=1,
                       schedule="constant", zero_stage=2, micro_batch_size=1, grad_accum=1, world_size=1,
                       grad_clip=1.0, offload="optimizer")
    with pytest.raises(ValueError, match="rollout.sleep_during_update frees the GPU memory vLLM holds"):
        VLLMRollout("/nowhere", eos_id=0, sleep_during_update=True)
