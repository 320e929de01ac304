"""bench/trl_compare.py compares like with like: siirl's config and TRL's GRPOConfig
arguments come from one spec and must agree on batch, tokens, learning rate, loss, KL,
sampling and seed. (Not timed; TRL itself is installed only by the benchmark.)"""
import importlib.util
import os

from siirl_core.compose import compose_config
from siirl_core.config import to_dict
from tests.conftest import ROOT


def _work_spec():
    spec = importlib.util.spec_from_file_location("work_spec", os.path.join(ROOT, "bench", "work_spec.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_both_sides_get_the_same_work():
    ws = _work_spec()
    spec, iterations = dict(ws.SPEC), 5
    for size in ("tiny", "small", "medium"):
        for side, (backend, extra) in ws.SIIRL_SIDES.items():
            cfg = compose_config(ws.siirl_overrides(spec, size, backend, iterations, extra))
            trl = ws.trl_config_kwargs(spec, iterations, "/tmp/out")
            assert cfg.model.size == size and cfg.rollout.backend == backend
            assert cfg.trainer.prompts_per_step * cfg.rollout.n == trl["per_device_train_batch_size"]
            assert cfg.rollout.n == trl["num_generations"]
            assert cfg.rollout.max_new_tokens == cfg.rollout.min_new_tokens == trl["max_completion_length"] \
                == trl["generation_kwargs"]["min_new_tokens"]  # fixed-length generation on both sides
            assert cfg.trainer.lr == trl["learning_rate"] and cfg.trainer.lr_schedule == trl["lr_scheduler_type"]
            assert cfg.algorithm.clip_ratio_low == cfg.algorithm.clip_ratio_high == trl["epsilon"]
            assert cfg.algorithm.kl_coef == trl["beta"] == 0.0
            assert cfg.algorithm.loss_agg_mode == "token-mean" and trl["loss_type"] == "dapo"  # token-level mean
            assert cfg.algorithm.adv_estimator == "grpo" and cfg.algorithm.norm_adv_by_std  # TRL's default scaling
            assert cfg.trainer.ppo_epochs == trl["num_iterations"] == 1 and cfg.trainer.mini_batches == 1
            assert trl["steps_per_generation"] == trl["gradient_accumulation_steps"] == 1
            assert cfg.rollout.temperature == trl["temperature"] and cfg.trainer.seed == trl["seed"]
            assert cfg.trainer.grad_clip == trl["max_grad_norm"] and cfg.trainer.weight_decay == trl["weight_decay"]
            assert cfg.trainer.steps == trl["max_steps"] == spec["warmup"] + iterations
            assert cfg.reward.function == ws.REWARD and not trl["shuffle_dataset"]
            assert trl["use_cpu"] and not trl["bf16"]  # siirl trains in fp32 on the CPU


def test_on_a_gpu_trl_trains_in_bf16_like_siirl():
    """siirl's DeepSpeed engines run in bf16 whenever a GPU is present; TRL is told the same."""
    ws = _work_spec()
    trl = ws.trl_config_kwargs(dict(ws.SPEC), 5, "/tmp/out", device="cuda")
    assert not trl["use_cpu"] and trl["bf16"]


def test_the_allrows_side_differs_only_in_skipping_zero_advantage_rows():
    ws = _work_spec()
    configs = {side: to_dict(compose_config(ws.siirl_overrides(dict(ws.SPEC), "small", backend, 3, extra)))
               for side, (backend, extra) in ws.SIIRL_SIDES.items() if backend == "hf"}
    skip, allrows = configs["siirl-hf"], configs["siirl-hf-allrows"]
    assert skip["trainer"].pop("skip_zero_advantage") and not allrows["trainer"].pop("skip_zero_advantage")
    assert skip == allrows
