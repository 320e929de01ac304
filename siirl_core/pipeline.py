"""One RL iteration as an ordered list of nodes over a per-rank context.

Every node reads and writes `ctx` (a dict) and may record metrics. The default
GRPO graph is rollout -> reward -> old_logprobs -> ref_logprobs -> advantage ->
update -> sync (the training nodes live in update_nodes.py). Tensors stay on the rank;
only the reduced metrics leave it.
"""
from __future__ import annotations

import inspect
import logging
import time
from typing import Callable

import torch

from siirl_core.algorithms import ADVANTAGE_ESTIMATORS
from siirl_core.algorithms.kl import kl_in_reward
from siirl_core.distributed import all_gather, pooled_mean
from siirl_core.data import shard
from siirl_core.metrics import MetricBag
from siirl_core.algorithms.advantages import gae_advantages_returns
from siirl_core.algorithms.shaping import overlong_penalty
from siirl_core.rewards import Scored, add_format_bonus
from siirl_core.rollout.base import RolloutBatch, SamplingConfig
from siirl_core.training.fused import fused_update_active
from siirl_core.training.logprobs import compute_full_logprobs, compute_logprobs
from siirl_core.update_nodes import node_critic_update, node_old_logprobs, node_sync, node_update, node_values

log = logging.getLogger("siirl.pipeline")
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


def timed(name: str, fn: Callable) -> Callable:
    def run(worker, ctx, bag: MetricBag):
        t0 = time.perf_counter()
        fn(worker, ctx, bag)
        if torch.cuda.is_available():  # GPU work is asynchronous: finish it inside its node's time
            torch.cuda.synchronize()
        bag.add(f"timing_s/{name}", time.perf_counter() - t0, reduce="max")
    return run


def _generate(w, problems: list, step: int, round_: int = 0, keep_graph: bool = False) -> RolloutBatch:
    cfg, t = w.cfg, w.cfg.trainer
    prompt_ids = [w.tokenizer(p.prompt)["input_ids"] for p in problems]
    sampling = SamplingConfig(n=cfg.rollout.n, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                              max_new_tokens=cfg.rollout.max_new_tokens, min_new_tokens=cfg.rollout.min_new_tokens)
    # data_seed mixed in below 2**31: vLLM's per-prompt seeds are multiplied up and must stay int64.
    seed = ((t.seed * 100_003 + step) * 1_009 + w.rank) ^ (t.data_seed * 2_654_435_761 % 2**31)
    if keep_graph:
        return w.rollout.generate(prompt_ids, sampling, seed + round_ * 7_919, keep_graph=True)
    return w.rollout.generate(prompt_ids, sampling, seed + round_ * 7_919)


def _my_prompts(w, step: int, round_: int = 0) -> list:
    t = w.cfg.trainer
    stream = t.data_seed if round_ == 0 else t.data_seed * 1_000 + round_  # extra rounds: fresh prompts
    return shard(w.task.train_batch(t.seed, step, t.prompts_per_step, stream=stream), w.rank, w.world_size)


def _record_rollout(ctx, bag) -> None:
    lengths = [len(r) for r in ctx["rollout"].response_ids]
    n = len(lengths)
    bag.add("response/length_mean", sum(lengths) / n, weight=n)
    bag.add("response/length_max", max(lengths), reduce="max")
    bag.add("response/finished_frac", sum(ctx["rollout"].finished) / n, weight=n)
    bag.add("perf/rollout_tokens", sum(lengths), reduce="sum")


def node_rollout(w, ctx, bag):
    problems = _my_prompts(w, ctx["step"])
    fused = fused_update_active(w.cfg)
    ctx["problems"], ctx["rollout"] = problems, _generate(w, problems, ctx["step"], keep_graph=fused)
    if fused:  # the update back-propagates through these instead of a forward pass of its own
        ctx["rollout_logits"], ctx["rollout"].train_logits = ctx["rollout"].train_logits, None
    ctx["tensors"] = pad_batch(ctx["rollout"], w.tokenizer.pad_token_id)
    _record_rollout(ctx, bag)


def reward_samples(w, ctx, texts: list[str]) -> list[dict]:
    """The reward function's inputs, one per sample, with an id naming step, rank and prompt."""
    rb, out = ctx["rollout"], []
    for j, (text, g, finished) in enumerate(zip(texts, rb.group_index, rb.finished)):
        p = ctx["problems"][g]
        sid = f"step {ctx['step']} rank {w.rank} prompt {g}" + (f" ({p.uid})" if p.uid else "") + f" sample {j}"
        out.append({"data_source": p.data_source or w.task.name, "solution_str": text, "ground_truth": p.truth,
                    "extra_info": dict(p.extra_info, finished=finished, id=sid)})
    return out


def score_rollout(w, ctx) -> tuple[list[float], list[float], object]:
    """(rewards, accuracies, Scored) of ctx's rollout: the reward function, the format
    bonus and DAPO's overlong penalty."""
    rb, cfg = ctx["rollout"], w.cfg
    texts = [w.tokenizer.decode(r, skip_special_tokens=True) for r in rb.response_ids]
    scored = w.reward.score(reward_samples(w, ctx, texts))
    rewards = add_format_bonus(w.task, texts, rb.finished, scored, cfg.task.format_reward)
    if cfg.algorithm.overlong_buffer:
        lengths = torch.tensor([len(r) + int(f) for r, f in zip(rb.response_ids, rb.finished)])  # EOS counts
        penalty = overlong_penalty(lengths, cfg.rollout.max_new_tokens, cfg.algorithm.overlong_buffer,
                                   cfg.algorithm.overlong_penalty_factor)
        rewards = [r + float(p) for r, p in zip(rewards, penalty)]
    return rewards, scored.accuracies, scored


def _record_rewards(bag, rewards: list[float], acc: list[float], scored) -> None:
    n = len(rewards)
    bag.add("reward/mean", sum(rewards) / n, weight=n)
    bag.add("reward/accuracy", sum(acc) / n, weight=n)
    bag.add("reward/errors", scored.errors, reduce="sum")
    bag.add("reward/timeouts", scored.timeouts, reduce="sum")


def node_reward(w, ctx, bag):
    rewards, acc, scored = score_rollout(w, ctx)
    ctx["scores"] = torch.tensor(rewards, dtype=torch.float32)
    _record_rewards(bag, rewards, acc, scored)


def _groups(rb: RolloutBatch) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, g in enumerate(rb.group_index):
        out.setdefault(g, []).append(i)
    return out


def node_dynamic_sampling(w, ctx, bag):
    """DAPO's dynamic sampling: keep only groups whose rewards differ (the others carry no
    GRPO gradient) and sample fresh prompts until this rank's share is full, for at most
    algorithm.max_sampling_rounds rounds. At the bound, equal-reward groups fill the rest
    (advantage 0), so every rank trains on the same number of samples, and a warning says so."""
    target = w.cfg.trainer.prompts_per_step // w.world_size  # this rank's share of prompts
    kept, spare = [], []  # (problem, sample rows, rewards, accuracies)
    errors = timeouts = rounds = 0
    for round_ in range(w.cfg.algorithm.max_sampling_rounds):
        rounds += 1
        problems = _my_prompts(w, ctx["step"], round_)
        part = {"problems": problems, "rollout": _generate(w, problems, ctx["step"], round_), "step": ctx["step"]}
        rewards, acc, scored = score_rollout(w, part)
        errors, timeouts = errors + scored.errors, timeouts + scored.timeouts
        for g, rows in _groups(part["rollout"]).items():
            entry = (problems[g], [_row(part["rollout"], i) for i in rows], [rewards[i] for i in rows],
                     [acc[i] for i in rows])
            (kept if max(entry[2]) > min(entry[2]) else spare).append(entry)
        if len(kept) >= target:
            break
    bag.add("dapo/kept_group_frac", len(kept) / (target * rounds), weight=target * rounds)
    bag.add("dapo/sampling_rounds", rounds, reduce="max")
    bag.add("dapo/batch_filled", float(len(kept) >= target), reduce="min")
    if len(kept) < target:
        log.warning("dynamic sampling at step %d (rank %d): only %d of %d groups had differing rewards after "
                    "%d rounds (algorithm.max_sampling_rounds); %d equal-reward groups fill the batch",
                    ctx["step"], w.rank, len(kept), target, rounds, target - len(kept))
    batch = (kept + spare)[:target]
    ctx["problems"] = [b[0] for b in batch]
    ctx["rollout"] = RolloutBatch([], [], [], [], [])
    for g, (_, rows, _, _) in enumerate(batch):
        for prompt_ids, response_ids, logprobs, finished in rows:
            for field_, value in zip(("prompt_ids", "response_ids", "response_logprobs", "finished", "group_index"),
                                     (prompt_ids, response_ids, logprobs, finished, g)):
                getattr(ctx["rollout"], field_).append(value)
    rewards = [r for b in batch for r in b[2]]
    ctx["scores"] = torch.tensor(rewards, dtype=torch.float32)
    ctx["tensors"] = pad_batch(ctx["rollout"], w.tokenizer.pad_token_id)
    _record_rollout(ctx, bag)
    scored = Scored(rewards, [a for b in batch for a in b[3]], errors, timeouts)
    _record_rewards(bag, rewards, scored.accuracies, scored)


def _row(rb: RolloutBatch, i: int) -> tuple:
    return rb.prompt_ids[i], rb.response_ids[i], rb.response_logprobs[i], rb.finished[i]


def node_ref_logprobs(w, ctx, bag):
    if w.ref_module is None:
        ctx["ref_log_probs"] = None
        return
    t = ctx["tensors"]
    args = (t["input_ids"], t["attention_mask"], t["response_len"], w.cfg.trainer.micro_batch_size,
            w.cfg.rollout.temperature)
    if w.cfg.algorithm.kl_estimator == "full":  # the exact KL compares whole distributions
        ctx["ref_log_probs"] = compute_full_logprobs(w.ref_module, *args)  # [B, R, V]
        if w.cfg.algorithm.kl_in_reward:
            ctx["old_full_log_probs"] = compute_full_logprobs(w.actor.module, *args)
        return
    ctx["ref_log_probs"] = compute_logprobs(w.ref_module, *args)


def node_remax_baseline(w, ctx, bag):
    """ReMax's baseline: the reward of each prompt's greedy response, for every sample of it."""
    cfg, rb = w.cfg, ctx["rollout"]
    prompt_ids = [w.tokenizer(p.prompt)["input_ids"] for p in ctx["problems"]]
    greedy = w.rollout.generate(prompt_ids, SamplingConfig(n=1, greedy=True, max_new_tokens=cfg.rollout.max_new_tokens),
                                seed=0)
    texts = [w.tokenizer.decode(r, skip_special_tokens=True) for r in greedy.response_ids]
    base_ctx = {"rollout": greedy, "problems": ctx["problems"], "step": ctx["step"]}
    scored = w.reward.score(reward_samples(w, base_ctx, texts))
    base = torch.tensor(scored.rewards, dtype=torch.float32)  # [prompts]
    ctx["baseline_scores"] = base[torch.tensor(rb.group_index)]  # [B]
    bag.add("reward/greedy_baseline_mean", float(base.mean()), weight=len(base))


def outcome_token_rewards(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Each sequence's score on its last response token, 0 elsewhere: [B] -> [B, R]."""
    last = (response_mask.sum(-1).long() - 1).clamp_min(0)  # [B]
    out = torch.zeros_like(response_mask)
    out[torch.arange(len(scores)), last] = scores * response_mask[torch.arange(len(scores)), last]
    return out


def node_advantage(w, ctx, bag):
    """The configured estimator, given whichever of its optional inputs it asks for."""
    algo = w.cfg.algorithm
    t = ctx["tensors"]
    token_rewards = outcome_token_rewards(ctx["scores"], t["response_mask"])  # [B, R]
    if algo.kl_in_reward:
        policy = ctx["old_full_log_probs"] if algo.kl_estimator == "full" else ctx["old_log_probs"]
        token_rewards, kl = kl_in_reward(token_rewards, policy, ctx["ref_log_probs"],
                                         t["response_mask"], coef=w.kl_ctrl.value, estimator=algo.kl_estimator)
        # The controller steers on the token mean over the global batch; every rank gets the same value.
        batch_kl = pooled_mean(all_gather((float(kl), float(t["response_mask"].sum()))))
        bag.add("actor/reward_kl", float(kl), weight=float(t["response_mask"].sum()))
        bag.add("actor/reward_kl_coef", w.kl_ctrl.value)
        w.kl_ctrl.update(batch_kl, n_steps=len(ctx["scores"]) * w.world_size)
    available = {"norm_by_std": algo.norm_adv_by_std, "token_rewards": token_rewards, "values": ctx.get("values"),
                 "baseline_scores": ctx.get("baseline_scores"), "gamma": algo.gamma, "lam": algo.lam}
    estimator = ADVANTAGE_ESTIMATORS.get(algo.adv_estimator)
    wanted = inspect.signature(estimator).parameters
    kwargs = {k: v for k, v in available.items() if k in wanted and v is not None}
    scores = ctx["scores"]
    if algo.kl_in_reward and "token_rewards" not in wanted:
        # An outcome estimator sees the reward being optimised: the score minus coef times
        # the sequence's summed KL (verl sums the token-level rewards the same way).
        scores = token_rewards.sum(-1)  # [B]
    ctx["token_rewards"] = token_rewards
    ctx["advantages"] = estimator(scores, t["group_index"], t["response_mask"], **kwargs)  # [B, R]
    if ctx.get("values") is not None:  # the critic's targets
        _, ctx["returns"] = gae_advantages_returns(token_rewards, ctx["values"], t["response_mask"], algo.gamma,
                                                   algo.lam)


NODES: dict[str, Callable] = {
    "rollout": node_rollout, "reward": node_reward, "dynamic_sampling": node_dynamic_sampling,
    "remax_baseline": node_remax_baseline,
    "old_logprobs": node_old_logprobs, "ref_logprobs": node_ref_logprobs, "advantage": node_advantage,
    "update": node_update, "sync": node_sync, "values": node_values, "critic_update": node_critic_update,
}


def default_pipeline(cfg) -> tuple[str, ...]:
    first = ("dynamic_sampling",) if cfg.algorithm.dynamic_sampling else ("rollout", "reward")
    if cfg.algorithm.adv_estimator == "remax":
        first += ("remax_baseline",)
    if cfg.algorithm.adv_estimator == "gae":
        return first + ("old_logprobs", "ref_logprobs", "values", "advantage", "update", "critic_update", "sync")
    return first + DEFAULT_GRPO_PIPELINE[2:]


def resolve_pipeline(cfg) -> list[Callable]:
    """algorithm.pipeline: node names and user nodes (`pkg.module:fn` or `file.py:fn`, each
    called as fn(worker, ctx, bag)) in order; empty means the algorithm's default graph."""
    from siirl_core.rewards.user import load_callable

    out = []
    for entry in cfg.algorithm.pipeline or default_pipeline(cfg):
        if entry in NODES:
            out.append(timed(entry, NODES[entry]))
        elif ":" in entry:
            out.append(timed(entry.rsplit(":", 1)[1], load_callable(entry, "algorithm.pipeline")))
        else:
            raise ValueError(f"algorithm.pipeline entry {entry!r} is neither a built-in node "
                             f"({', '.join(NODES)}) nor 'module:function' / 'file.py:function'")
    return out


def run_iteration(worker, step: int, nodes: list[Callable]) -> MetricBag:
    bag = MetricBag()
    ctx = {"step": step}
    t0 = time.perf_counter()
    for node in nodes:
        node(worker, ctx, bag)
    bag.add("timing_s/iteration", time.perf_counter() - t0, reduce="max")
    return bag
