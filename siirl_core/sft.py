"""Supervised warm start: next-token training on task demonstrations.

No pretrained weights can be downloaded, so RL starts from a policy that has seen
`prompt -> answer` examples for a fixed number of steps (partial accuracy)."""
from __future__ import annotations

import logging
import os

import torch

from siirl_core.models import load_causal_lm, load_tokenizer
from siirl_core.training.logprobs import position_ids_from_mask

log = logging.getLogger("siirl.sft")


def demo_batch(tokenizer, problems) -> dict[str, torch.Tensor]:
    """<s>prompt answer</s>, left-padded; the loss covers the answer and EOS only."""
    rows, masks, labels = [], [], []
    encoded = []
    for p in problems:
        prompt = tokenizer(p.prompt)["input_ids"]
        answer = tokenizer(p.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        encoded.append((prompt, answer))
    width = max(len(a) + len(b) for a, b in encoded)
    for prompt, answer in encoded:
        pad = width - len(prompt) - len(answer)
        rows.append([tokenizer.pad_token_id] * pad + prompt + answer)
        masks.append([0] * pad + [1] * (len(prompt) + len(answer)))
        labels.append([-100] * (pad + len(prompt)) + answer)
    return {"input_ids": torch.tensor(rows), "attention_mask": torch.tensor(masks), "labels": torch.tensor(labels)}


def train_sft(model_path: str, out_dir: str, task, steps: int, batch_size: int, lr: float, seed: int,
              on_step=None) -> str:
    """Train and save an HF directory to out_dir; returns out_dir."""
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(model_path)
    model = load_causal_lm(model_path)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    for step in range(steps):
        batch = demo_batch(tokenizer, task.demonstrations(seed, step, batch_size))
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    position_ids=position_ids_from_mask(batch["attention_mask"]), labels=batch["labels"])
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if on_step is not None:
            on_step(step + 1, float(out.loss))
    tmp = out_dir + ".tmp"
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if os.path.exists(out_dir):
        import shutil
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)  # the cache entry appears whole or not at all
    return out_dir


@torch.no_grad()
def greedy_accuracy(model_path: str, task, max_new_tokens: int = 6, limit: int | None = None) -> float:
    """Exact-match accuracy of greedy transformers decoding on the held-out set."""
    from siirl_core.evaluation import greedy_correct
    from siirl_core.rollout.hf_engine import HFRollout

    tokenizer = load_tokenizer(model_path)
    model = load_causal_lm(model_path).eval()
    problems = task.eval_set()[:limit]
    engine = HFRollout(model, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id)
    return greedy_correct(engine, tokenizer, task, problems, max_new_tokens) / len(problems)
