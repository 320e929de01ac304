"""One RL iteration as an ordered list of nodes over a per-rank context.

Every node reads and writes `ctx` (a dict) and may record metrics. The default
GRPO graph is rollout -> reward -> old_logprobs -> ref_logprobs -> advantage ->
update -> sync. Tensors stay on the rank; only the reduced metrics leave it.
"""
from __future__ import annotations

import inspect
import logging
import time
from typing import Callable

import torch

from siirl_core.algorithms import ADVANTAGE_ESTIMATORS, masked_mean
from siirl_core.algorithms.kl import kl_in_reward
from siirl_core.algorithms.policy_loss import truncated_is_weights
from siirl_core.distributed import all_gather
from siirl_core.data import shard
from siirl_core.metrics import MetricBag
from siirl_core.algorithms.advantages import gae_advantages_returns
from siirl_core.algorithms.shaping import overlong_penalty
from siirl_core.algorithms.value import clipped_value_loss
from siirl_core.rewards import Scored, add_format_bonus
from siirl_core.rollout.base import RolloutBatch, SamplingConfig
from siirl_core.training.actor import policy_loss_terms
from siirl_core.training.critic import response_values
from siirl_core.training.fused import (fused_backward_cheaper, fused_update_active, on_policy_single_update,
                                      skips_zero_advantage)
from siirl_core.algorithms.entropy import entropy_from_logits, logprobs_from_logits
from siirl_core.training.logprobs import compute_full_logprobs, compute_logprobs, response_logits

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


def _record_mismatch(w, old, rollout_lp, mask, bag):
    """Rollout-engine vs trainer log-probs of the same tokens; the truncated IS weights when on."""
    tokens = float(mask.sum())
    bag.add("rollout/logprob_abs_diff", masked_mean((old - rollout_lp).abs(), mask), weight=tokens)
    if not rollout_correction_on(w.cfg):
        return None
    weights, m = truncated_is_weights(old, rollout_lp, mask, cap=w.cfg.algorithm.tis_cap)
    for k, v in m.items():
        bag.add(f"rollout/{k}", v, weight=tokens)
    return weights


def node_old_logprobs(w, ctx, bag):
    t = ctx["tensors"]
    if on_policy_single_update(w.cfg):
        ctx["old_log_probs"] = ctx["is_weights"] = None  # taken from the update's forward pass
        return
    ctx["old_log_probs"] = compute_logprobs(w.actor.module, t["input_ids"], t["attention_mask"], t["response_len"],
                                            w.cfg.trainer.micro_batch_size, w.cfg.rollout.temperature)
    ctx["is_weights"] = _record_mismatch(w, ctx["old_log_probs"], t["rollout_log_probs"], t["response_mask"], bag)


def rollout_correction_on(cfg) -> bool:
    """Truncated importance sampling against the rollout engine's log-probs: on by default
    when the rollout engine is not the trainer's own model (vLLM)."""
    mode = cfg.algorithm.rollout_correction
    return mode == "on" or (mode == "auto" and cfg.rollout.backend != "hf")


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
        batch_kl = sum(all_gather(float(kl))) / w.world_size  # every rank steers the same coefficient
        bag.add("actor/reward_kl", float(kl), weight=float(t["response_mask"].sum()))
        bag.add("actor/reward_kl_coef", w.kl_ctrl.value)
        w.kl_ctrl.update(batch_kl, n_steps=len(ctx["scores"]) * w.world_size)
    available = {"norm_by_std": algo.norm_adv_by_std, "token_rewards": token_rewards, "values": ctx.get("values"),
                 "baseline_scores": ctx.get("baseline_scores"), "gamma": algo.gamma, "lam": algo.lam}
    estimator = ADVANTAGE_ESTIMATORS.get(algo.adv_estimator)
    wanted = inspect.signature(estimator).parameters
    kwargs = {k: v for k, v in available.items() if k in wanted and v is not None}
    ctx["token_rewards"] = token_rewards
    ctx["advantages"] = estimator(ctx["scores"], t["group_index"], t["response_mask"], **kwargs)  # [B, R]
    if ctx.get("values") is not None:  # the critic's targets
        _, ctx["returns"] = gae_advantages_returns(token_rewards, ctx["values"], t["response_mask"], algo.gamma,
                                                   algo.lam)


def node_values(w, ctx, bag):
    """The critic's V(s_t) for every response token, before any update this step."""
    t = ctx["tensors"]
    ctx["values"] = w.critic.values(t["input_ids"], t["attention_mask"], t["response_len"],
                                    w.cfg.trainer.micro_batch_size)  # [B, R]
    bag.add("critic/values_mean", masked_mean(ctx["values"], t["response_mask"]),
            weight=float(t["response_mask"].sum()))


def node_critic_update(w, ctx, bag):
    """Fit the critic to the GAE returns with the clipped value loss, same epochs and
    mini-batches as the policy."""
    cfg, t = w.cfg, ctx["tensors"]
    gen = torch.Generator().manual_seed(cfg.trainer.seed * 7927 + ctx["step"])
    for _ in range(cfg.trainer.ppo_epochs):
        for mb in _minibatches(t["input_ids"].shape[0], cfg.trainer.mini_batches, gen):
            for micro in mb.split(cfg.trainer.micro_batch_size):
                v = response_values(w.critic.engine, t["input_ids"][micro], t["attention_mask"][micro],
                                    t["response_len"])  # on the critic's device
                old_v, returns, mask = (x[micro].to(v.device) for x in (ctx["values"], ctx["returns"],
                                                                       t["response_mask"]))
                loss, m = clipped_value_loss(v, old_v, returns, mask, clip_range=cfg.critic.value_clip,
                                             loss_agg_mode=cfg.algorithm.loss_agg_mode)
                w.critic.actor.micro_step(loss * (len(micro) / len(mb)) * w.critic.actor.grad_accum)
                weight = float(t["response_mask"][micro].sum())
                bag.add("critic/vf_loss", loss.detach(), weight=weight)
                for k, val in m.items():
                    bag.add(f"critic/{k}", val, weight=weight)
            bag.add("critic/grad_norm", w.critic.actor.grad_norm())


def _minibatches(n: int, mini_batches: int, generator: torch.Generator) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=generator) if mini_batches > 1 else torch.arange(n)
    return list(perm.chunk(mini_batches))


def _micro_loss(w, ctx, micro, bag):
    """The policy loss of one micro-batch, from one forward pass (or the rollout's, fused).
    With ctx["update_rows"] set, only those rows (at least one, so every rank back-propagates)
    run the forward pass; the others' log-probs are a constant 0 with old = new, i.e. ratio 1
    and, with their zero advantages, a loss of exactly 0, as they would have had."""
    cfg, t = w.cfg, ctx["tensors"]
    kept, chosen = ctx.get("rollout_logits"), ctx.get("update_rows")
    inside = torch.ones(len(micro), dtype=torch.bool) if chosen is None else chosen[micro].clone()
    if not bool(inside.any()):
        inside[0] = True
    computed = micro[inside]
    if kept is not None:  # [B, S, V] with S >= R: every response ends within the sampled steps
        logits = kept[micro.to(kept.device)][:, :t["response_len"]]
    else:
        logits = response_logits(w.actor.engine, t["input_ids"][computed], t["attention_mask"][computed],
                                 t["response_len"], cfg.rollout.temperature)  # [b, R, V], on the actor's device

    def rows(x, which=micro):  # rows of a batch tensor (kept on the CPU), where the logits are
        return None if x is None else x[which].to(logits.device)

    lp = logprobs_from_logits(logits, rows(t["input_ids"], computed if kept is None else micro)[:, -t["response_len"]:])
    entropy = entropy_from_logits(logits)
    mask = rows(t["response_mask"])
    if kept is None and chosen is not None:  # back to the micro-batch's rows
        at = torch.nonzero(inside).squeeze(1).to(logits.device)
        lp = torch.zeros(len(micro), lp.shape[1], dtype=lp.dtype, device=lp.device).index_copy(0, at, lp)
        entropy = torch.zeros_like(lp).index_copy(0, at, entropy)
    measured = mask * inside.to(mask.device)[:, None]  # tokens whose log-probs and entropy were computed
    full_kl = cfg.algorithm.kl_estimator == "full" and cfg.algorithm.kl_coef > 0
    if ctx.get("old_log_probs") is None:  # on-policy, one step: old = this very forward pass
        old = lp.detach()
        isw = _record_mismatch(w, old, rows(t["rollout_log_probs"]), measured, bag)
    else:
        old, isw = rows(ctx["old_log_probs"]), rows(ctx.get("is_weights"))
    return policy_loss_terms(lp, entropy, old, rows(ctx.get("ref_log_probs")),
                             rows(ctx["advantages"]), mask, cfg.algorithm, is_weights=isw,
                             kl_log_probs=torch.log_softmax(logits, -1) if full_kl else lp, entropy_mask=measured)


def _choose_update_rows(w, ctx, bag) -> None:
    """ctx["update_rows"]: the rows with a non-zero advantage, where leaving the others out
    is the same update (trainer.skip_zero_advantage); None: every row. The rollout's graph
    (fused update) covers every row: it is dropped when the chosen rows' own forward and
    backward passes cost fewer FLOPs than back-propagating through it."""
    ctx["update_rows"] = None
    if not skips_zero_advantage(w.cfg):
        return
    t = ctx["tensors"]
    active = (ctx["advantages"] != 0).any(-1)  # [B]
    rows, width = t["input_ids"].shape
    bag.add("perf/zero_advantage_rows", int((~active).sum()), reduce="sum")
    kept = ctx.get("rollout_logits")
    if kept is not None and fused_backward_cheaper(int(active.sum()), rows, rows // w.cfg.rollout.n,
                                                   width - t["response_len"], width, kept.shape[1]):
        return
    ctx.pop("rollout_logits", None)
    ctx["update_rows"] = active


def node_update(w, ctx, bag):
    cfg = w.cfg
    t = ctx["tensors"]
    n = t["input_ids"].shape[0]
    gen = torch.Generator().manual_seed(cfg.trainer.seed * 7919 + ctx["step"])
    tokens = 0
    _choose_update_rows(w, ctx, bag)
    bag.add("perf/fused_update", float("rollout_logits" in ctx))
    if "rollout_logits" in ctx and cfg.trainer.micro_batch_size < n:
        raise RuntimeError(f"the rollout's graph covers {n} samples but trainer.micro_batch_size is "
                           f"{cfg.trainer.micro_batch_size}: set trainer.fused_update=off")
    for _ in range(cfg.trainer.ppo_epochs):
        for mb in _minibatches(n, cfg.trainer.mini_batches, gen):
            for micro in mb.split(cfg.trainer.micro_batch_size):
                loss, m = _micro_loss(w, ctx, micro, bag)
                # DeepSpeed divides by its accumulation steps; weight by micro-batch share instead.
                w.actor.micro_step(loss * (len(micro) / len(mb)) * w.actor.grad_accum)
                weight = float(t["response_mask"][micro].sum())
                chosen = ctx["update_rows"]
                tokens += int(t["attention_mask"][micro if chosen is None else micro[chosen[micro]]].sum())
                for k, v in m.items():
                    bag.add(k, v, weight=weight)
            bag.add("actor/grad_norm", w.actor.grad_norm())
    ctx.pop("rollout_logits", None)  # its graph is spent; the context outlives the iteration
    bag.add("actor/lr", w.actor.current_lr())
    bag.add("perf/train_tokens", tokens, reduce="sum")


def node_sync(w, ctx, bag):
    w.rollout.sync_weights(w.actor.named_weights())


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
    worker.last_ctx = ctx  # the last iteration's batch, for inspection on the rank (never sent anywhere)
    return bag
