"""One RL iteration as an ordered list of nodes over a typed per-rank batch.

Every node is `node(parts, batch, bag)`: with the rank's engines (`parts`, a
rank_parts.RankParts), it reads the fields of `batch` (an `IterationBatch`) that earlier
nodes wrote, writes its own, and may record metrics in
`bag`. `NODES` declares what each built-in node reads and writes; `resolve_pipeline`
refuses an order in which a node would read a field no earlier node wrote. The default
GRPO graph is rollout -> reward -> old_logprobs -> ref_logprobs -> advantage -> update
-> sync (the training nodes live in update_nodes.py). Tensors stay on the rank; only the
reduced metrics leave it.
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
from siirl_core.algorithms.shaping import outcome_token_rewards, overlong_penalty
from siirl_core.batch import IterationBatch, Node, order_error, pad_rollout
from siirl_core.config import ConfigError
from siirl_core.config_rules import config_rule
from siirl_core.rewards import Scored, add_format_bonus
from siirl_core.rollout.base import RolloutBatch, SamplingConfig
from siirl_core.training.fused import fused_update_active
from siirl_core.training.logprobs import compute_full_logprobs, compute_logprobs
from siirl_core.training.micro_batches import micro_batching
from siirl_core.update_nodes import node_critic_update, node_old_logprobs, node_sync, node_update, node_values

log = logging.getLogger("siirl.pipeline")
DEFAULT_GRPO_PIPELINE = ("rollout", "reward", "old_logprobs", "ref_logprobs", "advantage", "update", "sync")


def timed(name: str, fn: Callable) -> Callable:
    def run(parts, batch, bag: MetricBag):
        t0 = time.perf_counter()
        fn(parts, batch, bag)
        if torch.cuda.is_available():  # GPU work is asynchronous: finish it inside its node's time
            torch.cuda.synchronize()
        bag.add(f"timing_s/{name}", time.perf_counter() - t0, reduce="max")
    return run


def _generate(parts, problems: list, step: int, round_: int = 0, keep_graph: bool = False) -> RolloutBatch:
    cfg, t = parts.cfg, parts.cfg.trainer
    prompt_ids = [parts.tokenizer(p.prompt)["input_ids"] for p in problems]
    sampling = SamplingConfig(n=cfg.rollout.n, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                              max_new_tokens=cfg.rollout.max_new_tokens, min_new_tokens=cfg.rollout.min_new_tokens)
    # data_seed mixed in below 2**31: vLLM's per-prompt seeds are multiplied up and must stay int64.
    seed = ((t.seed * 100_003 + step) * 1_009 + parts.rank) ^ (t.data_seed * 2_654_435_761 % 2**31)
    if keep_graph:
        return parts.rollout.generate(prompt_ids, sampling, seed + round_ * 7_919, keep_graph=True)
    return parts.rollout.generate(prompt_ids, sampling, seed + round_ * 7_919)


def _my_prompts(parts, step: int, round_: int = 0) -> list:
    t = parts.cfg.trainer
    stream = t.data_seed if round_ == 0 else t.data_seed * 1_000 + round_  # extra rounds: fresh prompts
    return shard(parts.task.train_batch(t.seed, step, t.prompts_per_step, stream=stream), parts.rank, parts.world_size)


def _record_rollout(rb: RolloutBatch, bag) -> None:
    lengths = [len(r) for r in rb.response_ids]
    n = len(lengths)
    bag.add("response/length_mean", sum(lengths) / n, weight=n)
    bag.add("response/length_max", max(lengths), reduce="max")
    bag.add("response/finished_frac", sum(rb.finished) / n, weight=n)
    bag.add("perf/rollout_tokens", sum(lengths), reduce="sum")


def node_rollout(parts, b: IterationBatch, bag):
    problems = _my_prompts(parts, b.step)
    fused = fused_update_active(parts.cfg)
    b.problems, b.rollout = problems, _generate(parts, problems, b.step, keep_graph=fused)
    if fused:  # the update back-propagates through these instead of a forward pass of its own
        b.rollout_logits, b.rollout.train_logits = b.rollout.train_logits, None
    b.tensors = pad_rollout(b.rollout, parts.tokenizer.pad_token_id)
    _record_rollout(b.rollout, bag)


def reward_samples(parts, step: int, problems: list, rb: RolloutBatch, texts: list[str]) -> list[dict]:
    """The reward function's inputs, one per sample, with an id naming step, rank and prompt."""
    out = []
    for j, (text, g, finished) in enumerate(zip(texts, rb.group_index, rb.finished)):
        p = problems[g]
        sid = f"step {step} rank {parts.rank} prompt {g}" + (f" ({p.uid})" if p.uid else "") + f" sample {j}"
        out.append({"data_source": p.data_source or parts.task.name, "solution_str": text, "ground_truth": p.truth,
                    "extra_info": dict(p.extra_info, finished=finished, id=sid)})
    return out


def score_rollout(parts, step: int, problems: list, rb: RolloutBatch) -> tuple[list[float], list[float], object]:
    """(rewards, accuracies, Scored) of a rollout of `problems`: the reward function, the
    format bonus and DAPO's overlong penalty."""
    cfg = parts.cfg
    texts = [parts.tokenizer.decode(r, skip_special_tokens=True) for r in rb.response_ids]
    scored = parts.reward.score(reward_samples(parts, step, problems, rb, texts))
    rewards = add_format_bonus(parts.task, texts, rb.finished, scored, cfg.task.format_reward)
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


def node_reward(parts, b: IterationBatch, bag):
    rewards, acc, scored = score_rollout(parts, b.step, b.problems, b.rollout)
    b.scores = torch.tensor(rewards, dtype=torch.float32)
    _record_rewards(bag, rewards, acc, scored)


def _groups(rb: RolloutBatch) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, g in enumerate(rb.group_index):
        out.setdefault(g, []).append(i)
    return out


def node_dynamic_sampling(parts, b: IterationBatch, bag):
    """DAPO's dynamic sampling: keep only groups whose rewards differ (the others carry no
    GRPO gradient) and sample fresh prompts until this rank's share is full, for at most
    algorithm.max_sampling_rounds rounds. At the bound, equal-reward groups fill the rest
    (advantage 0), so every rank trains on the same number of samples, and a warning says so."""
    target = parts.cfg.trainer.prompts_per_step // parts.world_size  # this rank's share of prompts
    kept, spare = [], []  # (problem, sample rows, rewards, accuracies)
    errors = timeouts = rounds = 0
    for round_ in range(parts.cfg.algorithm.max_sampling_rounds):
        rounds += 1
        problems = _my_prompts(parts, b.step, round_)
        rb = _generate(parts, problems, b.step, round_)
        rewards, acc, scored = score_rollout(parts, b.step, problems, rb)
        errors, timeouts = errors + scored.errors, timeouts + scored.timeouts
        for g, rows in _groups(rb).items():
            entry = (problems[g], [_row(rb, i) for i in rows], [rewards[i] for i in rows],
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
                    b.step, parts.rank, len(kept), target, rounds, target - len(kept))
    chosen = (kept + spare)[:target]
    b.problems = [entry[0] for entry in chosen]
    b.rollout = _joined([entry[1] for entry in chosen])
    rewards = [r for entry in chosen for r in entry[2]]
    b.scores = torch.tensor(rewards, dtype=torch.float32)
    b.tensors = pad_rollout(b.rollout, parts.tokenizer.pad_token_id)
    _record_rollout(b.rollout, bag)
    scored = Scored(rewards, [a for entry in chosen for a in entry[3]], errors, timeouts)
    _record_rewards(bag, rewards, scored.accuracies, scored)


def _row(rb: RolloutBatch, i: int) -> tuple:
    return rb.prompt_ids[i], rb.response_ids[i], rb.response_logprobs[i], rb.finished[i]


def _joined(groups: list[list[tuple]]) -> RolloutBatch:
    """One RolloutBatch of groups of `_row`s, group g's samples answering prompt g."""
    rows = [(row, g) for g, group in enumerate(groups) for row in group]
    return RolloutBatch([r[0] for r, _ in rows], [r[1] for r, _ in rows], [r[2] for r, _ in rows],
                        [r[3] for r, _ in rows], [g for _, g in rows])


def node_ref_logprobs(parts, b: IterationBatch, bag):
    if parts.ref_module is None:
        b.ref_log_probs = None
        return
    t = b.tensors
    cfg = parts.cfg
    args = (t.input_ids, t.attention_mask, t.response_len, micro_batching(cfg), cfg.rollout.temperature)
    if cfg.algorithm.kl_estimator == "full":  # the exact KL compares whole distributions
        b.ref_log_probs = compute_full_logprobs(parts.ref_module, *args)  # [B, R, V]
        if cfg.algorithm.kl_in_reward:
            b.old_full_log_probs = compute_full_logprobs(parts.actor.module, *args)
        return
    b.ref_log_probs = compute_logprobs(parts.ref_module, *args)


def node_remax_baseline(parts, b: IterationBatch, bag):
    """ReMax's baseline: the reward of each prompt's greedy response, for every sample of it."""
    cfg = parts.cfg
    prompt_ids = [parts.tokenizer(p.prompt)["input_ids"] for p in b.problems]
    greedy = parts.rollout.generate(prompt_ids,
                                    SamplingConfig(n=1, greedy=True, max_new_tokens=cfg.rollout.max_new_tokens),
                                    seed=0)
    texts = [parts.tokenizer.decode(r, skip_special_tokens=True) for r in greedy.response_ids]
    scored = parts.reward.score(reward_samples(parts, b.step, b.problems, greedy, texts))
    base = torch.tensor(scored.rewards, dtype=torch.float32)  # [prompts]
    b.baseline_scores = base[torch.tensor(b.rollout.group_index)]  # [B]
    bag.add("reward/greedy_baseline_mean", float(base.mean()), weight=len(base))


def node_advantage(parts, b: IterationBatch, bag):
    """The configured estimator, given whichever of its optional inputs it asks for."""
    algo = parts.cfg.algorithm
    t = b.tensors
    token_rewards = outcome_token_rewards(b.scores, t.response_mask)  # [B, R]
    if algo.kl_in_reward:
        policy = b.old_full_log_probs if algo.kl_estimator == "full" else b.old_log_probs
        token_rewards, kl = kl_in_reward(token_rewards, policy, b.ref_log_probs,
                                         t.response_mask, coef=parts.kl_ctrl.value, estimator=algo.kl_estimator)
        # The controller steers on the token mean over the global batch; every rank gets the same value.
        batch_kl = pooled_mean(all_gather((float(kl), float(t.response_mask.sum()))))
        bag.add("actor/reward_kl", float(kl), weight=float(t.response_mask.sum()))
        bag.add("actor/reward_kl_coef", parts.kl_ctrl.value)
        parts.kl_ctrl.update(batch_kl, n_steps=len(b.scores) * parts.world_size)
    available = {"norm_by_std": algo.norm_adv_by_std, "token_rewards": token_rewards, "values": b.values,
                 "baseline_scores": b.baseline_scores, "gamma": algo.gamma, "lam": algo.lam}
    estimator = ADVANTAGE_ESTIMATORS.get(algo.adv_estimator)
    wanted = inspect.signature(estimator).parameters
    kwargs = {k: v for k, v in available.items() if k in wanted and v is not None}
    scores = b.scores
    if algo.kl_in_reward and "token_rewards" not in wanted:
        # An outcome estimator sees the reward being optimised: the score minus coef times
        # the sequence's summed KL (verl sums the token-level rewards the same way).
        scores = token_rewards.sum(-1)  # [B]
    b.token_rewards = token_rewards
    b.advantages = estimator(scores, t.group_index, t.response_mask, **kwargs)  # [B, R]
    if b.values is not None:  # the critic's targets
        _, b.returns = gae_advantages_returns(token_rewards, b.values, t.response_mask, algo.gamma, algo.lam)


def _advantage_reads(cfg) -> tuple[str, ...]:
    algo, extra = cfg.algorithm, ()
    if algo.kl_in_reward:
        extra += ("ref_log_probs", "old_full_log_probs" if algo.kl_estimator == "full" else "old_log_probs")
    if algo.adv_estimator == "gae":
        extra += ("values",)
    if algo.adv_estimator == "remax":
        extra += ("baseline_scores",)
    return ("tensors", "scores", *extra)


def _update_reads(cfg) -> tuple[str, ...]:
    kl_loss = ("ref_log_probs",) if cfg.algorithm.kl_coef > 0 and not cfg.algorithm.kl_in_reward else ()
    return ("tensors", "advantages", "old_log_probs", *kl_loss)


_SAMPLES = ("problems", "rollout", "tensors")
# Each built-in node with the batch fields it reads and writes; reads may depend on the
# configuration (a function of it), e.g. the advantage needs values only for GAE.
NODES: dict[str, Node] = {n.name: n for n in (
    Node("rollout", node_rollout, (), (*_SAMPLES, "rollout_logits")),
    Node("reward", node_reward, ("problems", "rollout"), ("scores",)),
    Node("dynamic_sampling", node_dynamic_sampling, (), (*_SAMPLES, "scores")),
    Node("remax_baseline", node_remax_baseline, ("problems", "rollout"), ("baseline_scores",)),
    Node("old_logprobs", node_old_logprobs, ("tensors",), ("old_log_probs", "is_weights")),
    Node("ref_logprobs", node_ref_logprobs, ("tensors",), ("ref_log_probs", "old_full_log_probs")),
    Node("values", node_values, ("tensors",), ("values",)),
    Node("advantage", node_advantage, _advantage_reads, ("token_rewards", "advantages", "returns")),
    Node("update", node_update, _update_reads, ("update_rows",)),
    Node("critic_update", node_critic_update, ("tensors", "values", "returns"), ()),
    Node("sync", node_sync, (), ()),
)}


def default_pipeline(cfg) -> tuple[str, ...]:
    first = ("dynamic_sampling",) if cfg.algorithm.dynamic_sampling else ("rollout", "reward")
    if cfg.algorithm.adv_estimator == "remax":
        first += ("remax_baseline",)
    if cfg.algorithm.adv_estimator == "gae":
        return first + ("old_logprobs", "ref_logprobs", "values", "advantage", "update", "critic_update", "sync")
    return first + DEFAULT_GRPO_PIPELINE[2:]


def _resolved(cfg, entry: str) -> Node:
    from siirl_core.rewards.user import load_callable

    if entry in NODES:
        node = NODES[entry]
        return Node(entry, node.fn, node.reads(cfg) if callable(node.reads) else node.reads, node.writes)
    if ":" in entry:
        fn = load_callable(entry, "algorithm.pipeline")
        return Node(entry, fn, tuple(getattr(fn, "reads", ())), tuple(getattr(fn, "writes", ())))
    raise ValueError(f"algorithm.pipeline entry {entry!r} is neither a built-in node "
                     f"({', '.join(NODES)}) nor 'module:function' / 'file.py:function'")


def resolve_pipeline(cfg) -> list[Callable]:
    """algorithm.pipeline: node names and user nodes (`pkg.module:fn` or `file.py:fn`, each
    called as fn(parts, batch, bag), declaring what they read and write with
    `siirl_core.batch.declared`) in order; empty means the algorithm's default graph.
    An order in which a node reads a field before any node writes it is a ValueError."""
    nodes = [_resolved(cfg, entry) for entry in cfg.algorithm.pipeline or default_pipeline(cfg)]
    problem = order_error(nodes, IterationBatch)
    if problem:
        raise ValueError(f"algorithm.pipeline cannot run: {problem}")
    return [timed(n.name.rsplit(":", 1)[-1], n.fn) for n in nodes]


@config_rule("algorithm.pipeline")
def _pipeline_rule(cfg) -> None:
    """A custom pipeline: every entry resolves (user nodes import and are callable) and the
    order lets every node find the fields it reads."""
    from siirl_core.rewards import RewardFunctionError

    if cfg.algorithm.pipeline:
        try:
            resolve_pipeline(cfg)
        except (ValueError, RewardFunctionError) as err:
            raise ConfigError(str(err)) from None


def run_iteration(parts, step: int, nodes: list[Callable], batch_type: type = IterationBatch) -> MetricBag:
    """One iteration: each node in order, given the rank's parts (rank_parts.RankParts or
    EpisodeParts), the batch and the metric bag."""
    bag = MetricBag()
    batch = batch_type(step=step)
    t0 = time.perf_counter()
    for node in nodes:
        node(parts, batch, bag)
    bag.add("timing_s/iteration", time.perf_counter() - t0, reduce="max")
    return bag
