"""One RL iteration as an ordered list of nodes over a per-rank context.

Every node reads and writes `ctx` (a dict) and may record metrics. The default
GRPO graph is rollout -> reward -> old_logprobs -> ref_logprobs -> advantage ->
update -> sync. Tensors stay on the rank; only the reduced metrics leave it.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from siirl_core.algorithms import ADVANTAGE_ESTIMATORS, masked_mean
from siirl_core.data import shard
from siirl_core.metrics import MetricBag
from siirl_core.rewards import add_format_bonus
from siirl_core.rollout.base import RolloutBatch, SamplingConfig
from siirl_core.training.actor import policy_loss_terms
from siirl_core.training.logprobs import compute_logprobs, forward_response_logprobs

DEFAULT_GRPO_PIPELINE = ("rollout", "reward", "old_logprobs", "ref_logprobs", "advantage", "update", "sync")


def pad_batch(batch: RolloutBatch, pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad prompts and right-pad responses into one [B, P+R] layout."""
    p_len = max(len(p) for p in batch.prompt_ids)
    r_len = max(1, max(len(r) for r in batch.response_ids))
    rows, masks, resp_mask, rollout_lp = [], [], [], []
    for p, r, lp in zip(batch.prompt_ids, batch.response_ids, batch.response_logprobs):
        rows.append([pad_id] * (p_len - len(p)) + p + r + [pad_id] * (r_len - len(r)))
        masks.append([0] * (p_len - len(p)) + [1] * (len(p) + len(r)) + [0] * (r_len - len(r)))
        resp_mask.append([1] * len(r) + [0] * (r_len - len(r)))
        rollout_lp.append(list(lp) + [0.0] * (r_len - len(lp)))
    return {
        "input_ids": torch.tensor(rows),  # [B, P+R]
        "attention_mask": torch.tensor(masks),  # [B, P+R]
        "response_mask": torch.tensor(resp_mask, dtype=torch.float32),  # [B, R]
        "rollout_log_probs": torch.tensor(rollout_lp),  # [B, R]
        "group_index": torch.tensor(batch.group_index),
        "response_len": r_len,
    }


def _timed(name: str, fn: Callable) -> Callable:
    def run(worker, ctx, bag: MetricBag):
        t0 = time.perf_counter()
        fn(worker, ctx, bag)
        bag.add(f"timing_s/{name}", time.perf_counter() - t0, reduce="max")
    return run


def node_rollout(w, ctx, bag):
    cfg = w.cfg
    t = cfg.trainer
    problems = shard(w.task.train_batch(t.seed, ctx["step"], t.prompts_per_step, stream=t.data_seed),
                     w.rank, w.world_size)
    prompt_ids = [w.tokenizer(p.prompt)["input_ids"] for p in problems]
    sampling = SamplingConfig(n=cfg.rollout.n, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                              max_new_tokens=cfg.rollout.max_new_tokens)
    # data_seed mixed in below 2**31: vLLM's per-prompt seeds are multiplied up and must stay int64.
    seed = ((t.seed * 100_003 + ctx["step"]) * 1_009 + w.rank) ^ (t.data_seed * 2_654_435_761 % 2**31)
    ctx["problems"], ctx["rollout"] = problems, w.rollout.generate(prompt_ids, sampling, seed)
    ctx["tensors"] = pad_batch(ctx["rollout"], w.tokenizer.pad_token_id)
    lengths = [len(r) for r in ctx["rollout"].response_ids]
    n = len(lengths)
    bag.add("response/length_mean", sum(lengths) / n, weight=n)
    bag.add("response/length_max", max(lengths), reduce="max")
    bag.add("response/finished_frac", sum(ctx["rollout"].finished) / n, weight=n)
    bag.add("perf/rollout_tokens", sum(lengths), reduce="sum")


def reward_samples(w, ctx, texts: list[str]) -> list[dict]:
    """The reward function's inputs, one per sample, with an id naming step, rank and prompt."""
    rb, out = ctx["rollout"], []
    for j, (text, g, finished) in enumerate(zip(texts, rb.group_index, rb.finished)):
        p = ctx["problems"][g]
        sid = f"step {ctx['step']} rank {w.rank} prompt {g}" + (f" ({p.uid})" if p.uid else "") + f" sample {j}"
        out.append({"data_source": p.data_source or w.task.name, "solution_str": text, "ground_truth": p.truth,
                    "extra_info": dict(p.extra_info, finished=finished, id=sid)})
    return out


def node_reward(w, ctx, bag):
    rb = ctx["rollout"]
    texts = [w.tokenizer.decode(r, skip_special_tokens=True) for r in rb.response_ids]
    scored = w.reward.score(reward_samples(w, ctx, texts))
    rewards, acc = add_format_bonus(w.task, texts, rb.finished, scored, w.cfg.task.format_reward), scored.accuracies
    bag.add("reward/errors", scored.errors, reduce="sum")
    bag.add("reward/timeouts", scored.timeouts, reduce="sum")
    ctx["scores"] = torch.tensor(rewards, dtype=torch.float32)
    n = len(rewards)
    bag.add("reward/mean", sum(rewards) / n, weight=n)
    bag.add("reward/accuracy", sum(acc) / n, weight=n)


def node_old_logprobs(w, ctx, bag):
    t = ctx["tensors"]
    ctx["old_log_probs"] = compute_logprobs(w.actor.module, t["input_ids"], t["attention_mask"], t["response_len"],
                                            w.cfg.trainer.micro_batch_size, w.cfg.rollout.temperature)
    # Mismatch between the rollout engine's and the trainer's log-probs of the same tokens.
    diff = (ctx["old_log_probs"] - t["rollout_log_probs"]).abs()
    bag.add("rollout/logprob_abs_diff", masked_mean(diff, t["response_mask"]), weight=float(t["response_mask"].sum()))


def node_ref_logprobs(w, ctx, bag):
    if w.ref_module is None:
        ctx["ref_log_probs"] = None
        return
    t = ctx["tensors"]
    ctx["ref_log_probs"] = compute_logprobs(w.ref_module, t["input_ids"], t["attention_mask"], t["response_len"],
                                            w.cfg.trainer.micro_batch_size, w.cfg.rollout.temperature)


def node_advantage(w, ctx, bag):
    algo = w.cfg.algorithm
    t = ctx["tensors"]
    estimator = ADVANTAGE_ESTIMATORS.get(algo.adv_estimator)
    kwargs = {"norm_by_std": algo.norm_adv_by_std} if algo.adv_estimator == "grpo" else {}
    ctx["advantages"] = estimator(ctx["scores"], t["group_index"], t["response_mask"], **kwargs)  # [B, R]


def _minibatches(n: int, mini_batches: int, generator: torch.Generator) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=generator) if mini_batches > 1 else torch.arange(n)
    return list(perm.chunk(mini_batches))


def node_update(w, ctx, bag):
    cfg = w.cfg
    t = ctx["tensors"]
    n = t["input_ids"].shape[0]
    gen = torch.Generator().manual_seed(cfg.trainer.seed * 7919 + ctx["step"])
    tokens = 0
    for _ in range(cfg.trainer.ppo_epochs):
        for mb in _minibatches(n, cfg.trainer.mini_batches, gen):
            micros = list(mb.split(cfg.trainer.micro_batch_size))
            for micro in micros:
                lp, ent = forward_response_logprobs(w.actor.engine, t["input_ids"][micro], t["attention_mask"][micro],
                                                   t["response_len"], cfg.rollout.temperature, with_entropy=True)
                ref = ctx["ref_log_probs"][micro] if ctx["ref_log_probs"] is not None else None
                loss, m = policy_loss_terms(lp, ent, ctx["old_log_probs"][micro], ref, ctx["advantages"][micro],
                                            t["response_mask"][micro], cfg.algorithm)
                # DeepSpeed divides by its accumulation steps; weight by micro-batch share instead.
                w.actor.micro_step(loss * (len(micro) / len(mb)) * w.actor.grad_accum)
                weight = float(t["response_mask"][micro].sum())
                tokens += int(t["attention_mask"][micro].sum())
                for k, v in m.items():
                    bag.add(k, v, weight=weight)
            bag.add("actor/grad_norm", w.actor.grad_norm())
    bag.add("actor/lr", w.actor.current_lr())
    bag.add("perf/train_tokens", tokens, reduce="sum")


def node_sync(w, ctx, bag):
    w.rollout.sync_weights(w.actor.named_weights())


NODES: dict[str, Callable] = {
    "rollout": node_rollout, "reward": node_reward, "old_logprobs": node_old_logprobs,
    "ref_logprobs": node_ref_logprobs, "advantage": node_advantage, "update": node_update, "sync": node_sync,
}


def run_iteration(worker, step: int, nodes=DEFAULT_GRPO_PIPELINE) -> MetricBag:
    bag = MetricBag()
    ctx = {"step": step}
    t0 = time.perf_counter()
    for name in nodes:
        _timed(name, NODES[name])(worker, ctx, bag)
    bag.add("timing_s/iteration", time.perf_counter() - t0, reduce="max")
    return bag
