"""TRL's GRPOTrainer on the benchmark's work; runs in TRL's own environment (.venv-trl).

    .venv-trl/bin/python bench/trl_side.py SPEC_JSON MODEL_DIR PROMPTS_JSONL ITERATIONS OUT_JSON [DEVICE]
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time

SPEC = json.loads(sys.argv[1])
os.environ["OMP_NUM_THREADS"] = str(SPEC["threads"])
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from bench_reward import prefix_match  # noqa: E402
from process_memory import peak_rss_mib  # noqa: E402
from work_spec import trl_config_kwargs  # noqa: E402


def reward(completions, answer, **_):
    return [prefix_match("bench", c, a) for c, a in zip(completions, answer)]


class StepTimer(TrainerCallback):
    def __init__(self):
        self.steps, self._t0 = [], 0.0

    def on_step_begin(self, args, state, control, **kw):
        _sync()
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        _sync()  # GPU work is asynchronous: count it in the step it belongs to
        self.steps.append(time.perf_counter() - self._t0)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    model_dir, prompts_path, iterations, out_path = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    device = sys.argv[6] if len(sys.argv) > 6 else "cpu"
    torch.set_num_threads(SPEC["threads"])
    rows = [json.loads(line) for line in open(prompts_path)]
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    gen_times: list[float] = []
    generate = model.generate

    def timed_generate(*a, **k):  # TRL generates through the model: time it there
        t0 = time.perf_counter()
        out = generate(*a, **k)
        _sync()
        gen_times.append(time.perf_counter() - t0)
        return out

    model.generate = timed_generate
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=reward,
                              args=GRPOConfig(**trl_config_kwargs(SPEC, iterations, tmp, device)),
                              train_dataset=Dataset.from_list(rows), callbacks=[timer])
        trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    w = SPEC["warmup"]
    json.dump({"iteration_s": timer.steps[w:], "rollout_s": gen_times[w:], "final_reward": rewards[-1],
               "rewards": rewards, "peak_rss_mib": peak_rss_mib(),
               "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
               "parameters": sum(p.numel() for p in model.parameters())}, open(out_path, "w"))


if __name__ == "__main__":
    main()
