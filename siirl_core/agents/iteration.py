"""One multi-agent iteration as pipeline nodes over a rank's `EpisodeBatch`: play the
episodes of this rank's starts, assign credit, update each policy on its agents' turns."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from siirl_core.agents.credit import CREDIT_ASSIGNMENTS
from siirl_core.agents.episodes import allowed_mask, restrict, run_episodes
from siirl_core.agents.signalling import pooled_statistics, signalling_surrogate
from siirl_core.algorithms import ADVANTAGE_ESTIMATORS
from siirl_core.algorithms.entropy import entropy_from_logits, logprobs_from_logits
from siirl_core.batch import Node, pad_rollout
from siirl_core.data import shard
from siirl_core.metrics import MetricBag
from siirl_core.rollout.base import RolloutBatch
from siirl_core.training.actor import policy_loss_terms
from siirl_core.training.logprobs import response_logits
from siirl_core.training.micro_batches import micro_batching
from siirl_core.training.update_loop import run_update, share_mode


@dataclass
class EpisodeBatch:
    """One multi-agent iteration's data on a rank (E episodes, A agents)."""

    step: int
    turns: list | None = None  # every policy turn played (episodes.Turn), in play order
    outcomes: list | None = None  # [E] envs.Outcome: per-agent and team rewards
    group_index: torch.Tensor | None = None  # [E] which start each episode plays
    advantages: torch.Tensor | None = None  # [E, A] per episode and agent (agents in config order)


def episode_seed(parts, step: int) -> int:
    return (parts.cfg.trainer.seed * 100_003 + step) * 1_009 + parts.rank


def record_outcomes(bag: MetricBag, prefix: str, agent_names: list[str], outcomes: list) -> None:
    """Team and per-agent means of a list of Outcomes, under `prefix` ("" or "val/")."""
    n = len(outcomes)
    bag.add(f"{prefix}episode/success", sum(o.success for o in outcomes) / max(n, 1), weight=n)
    bag.add(f"{prefix}reward/mean", sum(o.team for o in outcomes) / max(n, 1), weight=n)
    for name in agent_names:
        bag.add(f"{prefix}agent/{name}/reward/mean", sum(o.rewards[name] for o in outcomes) / max(n, 1), weight=n)
    for key in sorted({k for o in outcomes for k in o.stats}):
        bag.add(f"{prefix}{key}", sum(o.stats.get(key, 0.0) for o in outcomes) / max(n, 1), weight=n)


def node_episodes(parts, b: EpisodeBatch, bag):
    cfg, a = parts.cfg, parts.cfg.agents
    tr = cfg.trainer
    starts = shard(parts.env.starts(tr.seed, b.step, tr.prompts_per_step), parts.rank, parts.world_size)
    turns, transcripts = run_episodes(parts.env, starts, cfg.rollout.n, a.agents, a.graph, a.rounds, parts.policies,
                                      episode_seed(parts, b.step))
    episodes = [starts[e // cfg.rollout.n] for e in range(len(transcripts))]
    b.turns, b.outcomes = turns, [parts.env.outcome(s, t) for s, t in zip(episodes, transcripts)]
    b.group_index = torch.tensor([e // cfg.rollout.n for e in range(len(episodes))])
    record_outcomes(bag, "", parts.agent_names, b.outcomes)
    bag.add("reward/accuracy", sum(o.success for o in b.outcomes) / len(episodes), weight=len(episodes))
    for name in parts.agent_names:
        lengths = [len(t.response_ids) for t in turns if t.agent == name]
        if lengths:
            bag.add(f"agent/{name}/response/length_mean", sum(lengths) / len(lengths), weight=len(lengths))
    bag.add("perf/rollout_tokens", sum(len(t.response_ids) for t in turns), reduce="sum")


def node_credit(parts, b: EpisodeBatch, bag):
    """Advantages [episodes, agents] by the configured credit assignment."""
    names = parts.agent_names
    rewards = torch.tensor([[o.rewards[n] for n in names] for o in b.outcomes], dtype=torch.float32)
    team = torch.tensor([o.team for o in b.outcomes], dtype=torch.float32)
    assign = CREDIT_ASSIGNMENTS.get(parts.cfg.agents.credit)
    b.advantages = assign(rewards, team, b.group_index, ADVANTAGE_ESTIMATORS.get(parts.cfg.algorithm.adv_estimator))


def policies_to_update(parts, step: int) -> list[str]:
    trainable = list(parts.policies)
    if parts.cfg.agents.schedule == "alternating":
        return [trainable[(step - 1) % len(trainable)]]
    return trainable


def node_update(parts, b: EpisodeBatch, bag):
    column = {n: i for i, n in enumerate(parts.agent_names)}
    tokens = 0
    for pid in policies_to_update(parts, b.step):
        turns = [t for t in b.turns if t.policy == pid]
        adv = torch.tensor([float(b.advantages[t.episode, column[t.agent]]) for t in turns])
        tokens += update_policy(parts, pid, turns, adv, bag)
        bag.add(f"policy/{pid}/updated", 1.0)
    bag.add("perf/train_tokens", tokens, reduce="sum")


def _row_masks(parts, pid: str, turns: list) -> torch.Tensor:
    """Each turn's action mask [B, V] (all True for agents without one)."""
    tok = parts.policies[pid].tokenizer
    vocab = parts.policies[pid].actor.module.config.vocab_size
    by_agent = {a.name: allowed_mask(tok, a.allowed, vocab) for a in parts.cfg.agents.agents if a.policy == pid}
    full = torch.ones(vocab, dtype=torch.bool)
    return torch.stack([by_agent[t.agent] if by_agent[t.agent] is not None else full for t in turns])


def update_policy(parts, pid: str, turns: list, advantages: torch.Tensor, bag: MetricBag) -> int:
    """One on-policy step of policy `pid` on its agents' turns (advantage per turn)."""
    actor, tok = parts.policies[pid].actor, parts.policies[pid].tokenizer
    rb = RolloutBatch([t.prompt_ids for t in turns], [t.response_ids for t in turns], [t.logprobs for t in turns],
                      [t.finished for t in turns], [t.episode for t in turns])
    t = pad_rollout(rb, tok.pad_token_id)
    masks = _row_masks(parts, pid, turns)  # [B, V]
    temperature = {a.name: a.temperature for a in parts.cfg.agents.agents}
    temps = torch.tensor([temperature[x.agent] for x in turns])  # [B]
    adv = advantages[:, None] * t.response_mask  # [B, R]

    def policy_logits(micro: torch.Tensor) -> torch.Tensor:
        """The masked, tempered logits [b, R, V] the turns were sampled from."""
        logits = response_logits(actor.engine, t.input_ids[micro], t.attention_mask[micro], t.response_len,
                                 packed=parts.cfg.trainer.padding_free)
        dev = logits.device  # the actor's; the batch is built on the CPU
        return restrict(logits / temps[micro, None, None].to(dev), masks[micro].to(dev))

    bonus = _signalling_terms(parts, turns, policy_logits, bag)

    def micro_loss(micro: torch.Tensor, share: float):
        logits = policy_logits(micro)
        dev = logits.device
        lp = logprobs_from_logits(logits, t.input_ids[micro][:, -t.response_len:].to(dev))
        loss, m = policy_loss_terms(lp, entropy_from_logits(logits), lp.detach(), None, adv[micro].to(dev),
                                    t.response_mask[micro].to(dev), parts.cfg.algorithm)
        contribution = loss * share
        if bonus is not None:  # a mean over the rank's turns, as the engine averages ranks
            contribution = contribution - bonus(micro, logits) * len(micro) / len(turns)
        return contribution, m, None

    algo = parts.cfg.algorithm
    return run_update(actor, [torch.arange(len(turns))], micro_batching(parts.cfg), micro_loss, t.response_mask,
                      t.attention_mask, share_mode(algo), bag, prefix=f"policy/{pid}/",
                      step_prefix=f"policy/{pid}/actor/")


def _signalling_terms(parts, turns: list, policy_logits, bag: MetricBag):
    """For agents with a signalling bonus: log each one's I(prompt; first token) over the
    step's turns (all ranks) and return bonus(micro, logits) -> the micro-batch's share
    of the weighted bonus (to subtract from its mean loss); None when no agent has one."""
    weights = {a.name: a.signalling_bonus for a in parts.cfg.agents.agents}
    agents = sorted({x.agent for x in turns if weights[x.agent] > 0})
    if not agents:
        return None
    row_agent = [x.agent for x in turns]
    with torch.no_grad():
        first = torch.cat([torch.log_softmax(policy_logits(micro)[:, 0].float(), -1).cpu()
                           for micro in torch.arange(len(turns)).split(parts.cfg.trainer.micro_batch_size)])
    marginal, count = {}, {}
    for name in agents:
        rows = first[[i for i, a in enumerate(row_agent) if a == name]]  # [N_a, V] log-probs
        marginal[name], info, count[name] = pooled_statistics(rows)
        bag.add(f"agent/{name}/signalling/mutual_info", info)

    # The engine averages gradients over ranks and each rank's loss is a mean over its
    # len(turns) rows: this scale makes the bonus weight x the mean over the agent's turns
    # on every rank.
    scale = {name: weights[name] * parts.world_size * len(turns) / count[name] for name in agents}

    def bonus(micro: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits[:, 0].float(), -1)  # [b, V]
        out = logits.new_zeros(())
        for j, i in enumerate(micro.tolist()):
            name = row_agent[i]
            if name in marginal:
                out = out + scale[name] * signalling_surrogate(logp[j:j + 1], marginal[name].to(logp.device))[0]
        return out / len(micro)

    return bonus


EPISODE_NODES = (
    Node("episodes", node_episodes, (), ("turns", "outcomes", "group_index")),
    Node("credit", node_credit, ("outcomes", "group_index"), ("advantages",)),
    Node("update", node_update, ("turns", "advantages"), ()),
)
