"""Supervised warm start: next-token training on task demonstrations.

No pretrained weights can be downloaded, so RL starts from a policy that has seen
`prompt -> answer` examples for a fixed number of steps (partial accuracy)."""
from __future__ import annotations

import os

import torch

from siirl_core.models import load_causal_lm, load_tokenizer
from siirl_core.training.logprobs import position_ids_from_mask


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
              on_step=None, target_accuracy: float = 0.0, check_every: int = 25, probe_size: int = 200,
              max_new_tokens: int = 6, on_check=None) -> str:
    """Train and save an HF directory to out_dir; returns out_dir.

    With target_accuracy > 0, training stops at the first check (every check_every steps)
    where greedy accuracy on probe_size demonstrations reaches it; `steps` is then a cap.
    A tiny model learns addition in a sudden transition whose timing depends on the
    initialisation (and so on the seed and the CPU's rounding): a fixed step count left
    seeds anywhere between 5% and 50%; with a target they started RL at 32-39% (docs/learning.md).
    on_check(step, accuracy) is called after each check."""
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(model_path)
    model = load_causal_lm(model_path)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    # The batch after the last step: from the training distribution, never trained on.
    probe = task.demonstrations(seed, steps, probe_size) if target_accuracy > 0 else []
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
            on_step(step + 1, out.loss.detach().item())
        if probe and (step + 1) % check_every == 0:
            accuracy = _module_accuracy(model, tokenizer, task, probe, max_new_tokens)
            if on_check is not None:
                on_check(step + 1, accuracy)
            if accuracy >= target_accuracy:
                break
    tmp = out_dir + ".tmp"
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if os.path.exists(out_dir):
        import shutil
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)  # the cache entry appears whole or not at all
    return out_dir


@torch.no_grad()
def _module_accuracy(model, tokenizer, task, problems, max_new_tokens: int) -> float:
    from siirl_core.evaluation import greedy_correct
    from siirl_core.rollout.hf_engine import HFRollout

    engine = HFRollout(model, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id)
    return greedy_correct(engine, tokenizer, task, problems, max_new_tokens) / len(problems)


@torch.no_grad()
def greedy_accuracy(model_path: str, task, max_new_tokens: int = 6, limit: int | None = None) -> float:
    """Exact-match accuracy of greedy transformers decoding on the held-out set."""
    tokenizer = load_tokenizer(model_path)
    model = load_causal_lm(model_path).eval()
    return _module_accuracy(model, tokenizer, task, task.eval_set()[:limit], max_new_tokens)
