"""Running episodes: the interaction graph decides who speaks when and what each agent
sees; each agent's turn is sampled from its policy, batched over the episodes.

Agents with an action vocabulary (`allowed`) sample only those characters; the same
mask is applied when the trainer recomputes log-probs, so both see one policy.
"""
from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from siirl_core.training.logprobs import module_device, position_ids_from_mask

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


def allowed_mask(tokenizer, allowed: str, vocab_size: int) -> torch.Tensor | None:
    """[V] bool of the tokens an agent may emit, or None for no restriction."""
    if not allowed:
        return None
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    for ch in allowed:
        ids = tokenizer.convert_tokens_to_ids(ch)
        if ids is None or ids == tokenizer.unk_token_id:
            raise ValueError(f"allowed character {ch!r} is not in the policy's vocabulary")
        mask[ids] = True
    return mask


def restrict(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Logits [..., V] with disallowed tokens pushed to MASKED; mask [V] or [B, V] (per row)."""
    if mask is None:
        return logits
    if mask.dim() == 2 and logits.dim() == 3:  # [B, V] for [B, R, V]
        mask = mask[:, None, :]
    return logits.masked_fill(~mask, MASKED)


@torch.no_grad()
def sample(module, prompts: list[list[int]], *, max_new_tokens: int, temperature: float, greedy: bool,
           mask: torch.Tensor | None, eos_id: int, pad_id: int, generator: torch.Generator):
    """Responses (token ids, up to and including EOS) and their log-probs under the
    masked, tempered policy. Messages are a few tokens, so no KV cache. The forward
    passes run on the module's device; sampling runs on the CPU, with `generator`."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])  # [B, P]
    attn = (ids != pad_id).long()
    out = [[] for _ in prompts]
    lps = [[] for _ in prompts]
    done = torch.zeros(len(prompts), dtype=torch.bool)
    was_training = module.training
    module.eval()
    device = module_device(module)
    for _ in range(max_new_tokens):
        logits = module(input_ids=ids.to(device), attention_mask=attn.to(device),
                        position_ids=position_ids_from_mask(attn).to(device),
                        use_cache=False).logits[:, -1].float().cpu() / temperature  # [B, V]
        logp = torch.log_softmax(restrict(logits, mask), -1)
        tok = logp.argmax(-1) if greedy else torch.multinomial(logp.exp(), 1, generator=generator)[:, 0]
        for i in range(len(prompts)):
            if not done[i]:
                out[i].append(int(tok[i]))
                lps[i].append(float(logp[i, tok[i]]))
        done |= tok == eos_id
        live = (~done).long()
        ids = torch.cat([ids, torch.where(done, torch.full_like(tok, pad_id), tok)[:, None]], 1)
        attn = torch.cat([attn, live[:, None]], 1)
        if bool(done.all()):
            break
    module.train(was_training)
    return out, lps


@dataclass
class Policy:
    """What an episode needs of a policy: its module and tokenizer."""

    module: object
    tokenizer: object


def run_episodes(env, starts: list, n: int, agents: list, graph: str, rounds: int, policies: dict[str, Policy],
                 seed: int, greedy: bool = False) -> tuple[list[Turn], list[list[tuple[str, str]]]]:
    """n episodes per start (episode e plays starts[e // n]). Returns every sampled turn
    and each episode's transcript of (agent, message)."""
    episodes = [starts[e // n] for e in range(len(starts) * n)]
    transcripts: list[list[tuple[str, str]]] = [[] for _ in episodes]
    turns: list[Turn] = []
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    for spec, sees_others in schedule(agents, graph, rounds):
        visible = [t if sees_others else [] for t in transcripts]
        if spec.policy == "scripted":
            for e, start in enumerate(episodes):
                transcripts[e].append((spec.name, env.scripted(spec.name, start, rng)))
            continue
        pol = policies[spec.policy]
        tok = pol.tokenizer
        prompts = [tok(render(spec.template, start.observation(spec.name), visible[e]))["input_ids"]
                   for e, start in enumerate(episodes)]
        mask = allowed_mask(tok, spec.allowed, len(tok))
        responses, logprobs = sample(pol.module, prompts, max_new_tokens=spec.max_new_tokens,
                                     temperature=spec.temperature, greedy=greedy, mask=mask,
                                     eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, generator=gen)
        for e, (p, r, lp) in enumerate(zip(prompts, responses, logprobs)):
            finished = bool(r) and r[-1] == tok.eos_token_id
            turns.append(Turn(e, spec.name, spec.policy, p, r, lp, finished))
            transcripts[e].append((spec.name, tok.decode(r, skip_special_tokens=True)))
    return turns, transcripts
