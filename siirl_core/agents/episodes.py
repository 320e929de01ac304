"""Running episodes: the interaction graph decides who speaks when and what each agent
sees; each agent's turn is sampled by its policy's rollout engine (the same sampling
loop as single-agent runs), batched over the episodes.

Agents with an action vocabulary (`allowed`) sample only those characters; the same
mask is applied when the trainer recomputes log-probs, so both see one policy.
"""
from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from siirl_core.rollout.base import SamplingConfig

MASKED = -1e4  # finite: exp() underflows to 0 and 0 * logit stays 0 in the entropy


@dataclass
class Turn:
    """One agent's message in one episode, with what the trainer needs to score it."""

    episode: int
    agent: str
    policy: str
    prompt_ids: list[int] = field(default_factory=list)
    response_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finished: bool = False


def schedule(agents: list, graph: str, rounds: int) -> list[tuple[object, bool]]:
    """The turn order as (agent spec, sees earlier messages) pairs."""
    if graph == "chain":
        return [(a, True) for a in agents]
    if graph == "rounds":
        return [(a, True) for _ in range(rounds) for a in agents]
    if graph == "parallel":  # the workers see only their observation; the aggregator sees them all
        return [(a, False) for a in agents[:-1]] + [(agents[-1], True)]
    raise ValueError(f"agents.graph={graph!r}; expected chain, rounds or parallel")


def render(template: str, observation: str, visible: list[tuple[str, str]]) -> str:
    """The agent's prompt: {obs}, {history} (visible messages in order), {<agent>} (its
    latest visible message)."""
    fields = defaultdict(str, obs=observation, history="".join(text for _, text in visible))
    for name, text in visible:
        fields[name] = text
    return template.format_map(fields)


def allowed_ids(tokenizer, allowed: str) -> tuple[int, ...] | None:
    """The token ids of an agent's action vocabulary (one per character), or None for no
    restriction."""
    if not allowed:
        return None
    ids = []
    for ch in allowed:
        i = tokenizer.convert_tokens_to_ids(ch)
        if i is None or i == tokenizer.unk_token_id:
            raise ValueError(f"allowed character {ch!r} is not in the policy's vocabulary")
        ids.append(i)
    return tuple(ids)


def allowed_mask(tokenizer, allowed: str, vocab_size: int) -> torch.Tensor | None:
    """[V] bool of the tokens an agent may emit, or None for no restriction."""
    ids = allowed_ids(tokenizer, allowed)
    if ids is None:
        return None
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[list(ids)] = True
    return mask


def restrict(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Logits [..., V] with disallowed tokens pushed to MASKED; mask [V] or [B, V] (per row)."""
    if mask is None:
        return logits
    if mask.dim() == 2 and logits.dim() == 3:  # [B, V] for [B, R, V]
        mask = mask[:, None, :]
    return logits.masked_fill(~mask, MASKED)


def run_episodes(env, starts: list, n: int, agents: list, graph: str, rounds: int, policies: dict,
                 seed: int, greedy: bool = False) -> tuple[list[Turn], list[list[tuple[str, str]]]]:
    """n episodes per start (episode e plays starts[e // n]), each policy (policy id ->
    anything with `.rollout` and `.tokenizer`, e.g. a policy.TrainedPolicy) sampling its
    agents' turns. Returns every sampled turn and each episode's transcript of (agent, message)."""
    episodes = [starts[e // n] for e in range(len(starts) * n)]
    transcripts: list[list[tuple[str, str]]] = [[] for _ in episodes]
    turns: list[Turn] = []
    rng = random.Random(seed)
    for k, (spec, sees_others) in enumerate(schedule(agents, graph, rounds)):
        visible = [t if sees_others else [] for t in transcripts]
        if spec.policy == "scripted":
            for e, start in enumerate(episodes):
                transcripts[e].append((spec.name, env.scripted(spec.name, start, rng)))
            continue
        pol = policies[spec.policy]
        tok = pol.tokenizer
        prompts = [tok(render(spec.template, start.observation(spec.name), visible[e]))["input_ids"]
                   for e, start in enumerate(episodes)]
        sampling = SamplingConfig(n=1, temperature=spec.temperature, max_new_tokens=spec.max_new_tokens,
                                  greedy=greedy, allowed_token_ids=allowed_ids(tok, spec.allowed))
        rb = pol.rollout.generate(prompts, sampling, seed * 1_009 + k)  # one draw stream per turn of the schedule
        for e, (p, r, lp, finished) in enumerate(zip(prompts, rb.response_ids, rb.response_logprobs, rb.finished)):
            turns.append(Turn(e, spec.name, spec.policy, p, r, lp, finished))
            transcripts[e].append((spec.name, tok.decode(r, skip_special_tokens=True)))
    return turns, transcripts
