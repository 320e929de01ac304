"""A model of a real family's shape (SmolLM2-135M, BPE tokenizer) through the whole flow
with every memory feature on: vLLM samples from the merged LoRA weights, DeepSpeed trains
the adapters with gradient checkpointing in token-budget micro-batches packed without
padding, the checkpoint and the export hold the shape."""
import os

import pytest
from transformers import AutoConfig

from siirl_core.models import load_tokenizer
from tests.e2e.helpers import metrics_by_step, run_siirl, summary

pytestmark = pytest.mark.slow


def test_two_iterations_of_a_real_shape_with_vllm(tmp_path, cache_dir):
    run_dir = str(tmp_path / "run")
    run_siirl(["train", "model=smollm2-135m", "model.warm_start=false", "trainer.steps=2", "trainer.save_every=2",
               "trainer.eval_every=0", "trainer.prompts_per_step=4", "rollout.n=4", "trainer.micro_batch_size=8",
               "trainer.gradient_checkpointing=true", "model.lora.rank=8", "algorithm.entropy_coef=0.01",
               "trainer.max_tokens_per_micro_batch=64", "trainer.padding_free=true",
               "trainer.lr=1e-2", "task.eval_size=16",
               f"storage.uri={run_dir}", f"storage.cache_dir={cache_dir}"])
    m = metrics_by_step(run_dir)
    assert sorted(m) == [1, 2]
    # vLLM loaded the BPE-tokenized model and sampled from the weights the trainer scores with:
    # at step 2 those are the base plus the adapters trained at step 1, merged for vLLM.
    # (vLLM and the trainer agree to ~1e-6 in fp32; one step moves the log-probs by ~1e-4.)
    assert all(m[s]["rollout/logprob_abs_diff"] < 2e-5 and m[s]["actor/grad_norm"] > 0 for s in (1, 2))
    assert m[2]["actor/entropy"] != m[1]["actor/entropy"]  # the adapters moved
    # 16 samples of about 10 tokens (160 in all), at most 64 real tokens per packed micro-batch.
    assert all(m[s]["actor/micro_batches"] >= 3 for s in (1, 2))
    exported = summary(run_dir)["final_policy"]
    config = AutoConfig.from_pretrained(exported)
    assert (config.hidden_size, config.num_hidden_layers, config.num_key_value_heads, config.vocab_size) == \
        (576, 30, 3, 49152)
    assert load_tokenizer(exported).eos_token == "<|im_end|>"
    assert os.path.isfile(os.path.join(exported, "adapter", "adapter_config.json"))
    assert os.path.exists(os.path.join(run_dir, "checkpoints", "step_00000002", "manifest.json"))
