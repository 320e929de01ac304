"""The work both sides of bench/trl_compare.py do, and how each side is configured
from it. Pure Python: imported by siirl's environment and by TRL's own one."""
from __future__ import annotations

SPEC = {
    "prompts_per_step": 16,   # prompts per iteration
    "n": 8,                   # samples per prompt (TRL: num_generations)
    "max_new_tokens": 6,      # generated tokens per sample, fixed: EOS suppressed before
    "lr": 1e-5,
    "clip": 0.2,              # PPO clip, both sides; one update per batch
    "kl_coef": 0.0,           # no reference model on either side
    "temperature": 1.0,
    "threads": 1,             # torch / OpenMP threads per process
    "seed": 0,
    "sft_steps": 100,         # the shared warm start
    "warmup": 1,              # iterations not timed
}
# Fixed-length completions never end with EOS, so both sides score with the same
# prefix match: the completion starts with the answer.
REWARD = "bench/bench_reward.py:prefix_match"
# siirl's sides: rollout backend and overrides beyond the shared work. `siirl-hf-allrows`
# turns off skipping the rows whose advantages are all zero (trainer.skip_zero_advantage),
# so it runs every row through the update as TRL does: the same gradient, more FLOPs.
SIIRL_SIDES = {"siirl-vllm": ("vllm", []), "siirl-hf": ("hf", []),
               "siirl-hf-allrows": ("hf", ["trainer.skip_zero_advantage=false"])}


def siirl_overrides(spec: dict, size: str, backend: str, iterations: int, extra: list[str] = ()) -> list[str]:
    return list(extra) + [f"model.size={size}", f"rollout={backend}", f"trainer.prompts_per_step={spec['prompts_per_step']}",
            f"rollout.n={spec['n']}", f"rollout.max_new_tokens={spec['max_new_tokens']}",
            f"rollout.min_new_tokens={spec['max_new_tokens']}", f"trainer.lr={spec['lr']}",
            f"algorithm.clip_ratio_low={spec['clip']}", f"algorithm.clip_ratio_high={spec['clip']}",
            f"algorithm.kl_coef={spec['kl_coef']}", "algorithm.loss_agg_mode=token-mean",
            f"rollout.temperature={spec['temperature']}", f"trainer.seed={spec['seed']}",
            f"sft.steps={spec['sft_steps']}", f"trainer.steps={spec['warmup'] + iterations}",
            f"reward.function={REWARD}", f"trainer.micro_batch_size={spec['prompts_per_step'] * spec['n']}"]


def trl_config_kwargs(spec: dict, iterations: int, output_dir: str, device: str = "cpu") -> dict:
    """GRPOConfig arguments for the same work: one generation batch = one optimizer step.
    On a GPU both sides train in bf16 mixed precision (siirl: DeepSpeed's bf16 mode)."""
    return {
        "output_dir": output_dir, "per_device_train_batch_size": spec["prompts_per_step"] * spec["n"],
        "num_generations": spec["n"], "max_completion_length": spec["max_new_tokens"],
        "generation_kwargs": {"min_new_tokens": spec["max_new_tokens"]}, "learning_rate": spec["lr"],
        "epsilon": spec["clip"], "beta": spec["kl_coef"], "loss_type": "dapo",  # token-level mean, as siirl
        "temperature": spec["temperature"], "seed": spec["seed"], "max_steps": spec["warmup"] + iterations,
        "gradient_accumulation_steps": 1, "steps_per_generation": 1, "num_iterations": 1,
        "shuffle_dataset": False, "logging_steps": 1, "report_to": [], "save_strategy": "no",
        "use_cpu": device == "cpu", "bf16": device == "cuda", "lr_scheduler_type": "constant", "warmup_steps": 0, "weight_decay": 0.0,
        "max_grad_norm": 1.0, "dataloader_num_workers": 0,
    }
