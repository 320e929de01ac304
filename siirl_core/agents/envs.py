"""Multi-agent environments: episode starts (what each agent observes), scripted
players, and the outcome of an episode's messages (a reward per agent).

Each environment is registered by name and built from `agents.env_args`. Starts are a
pure function of (seed, step), like the single-agent tasks' prompts, so every rank
draws the same global batch and takes its shard.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from siirl_core.algorithms.registry import Registry

ENVIRONMENTS = Registry("multi-agent environment")


@dataclass
class Start:
    """One episode's beginning: each agent's observation ("*" for everyone) and what the
    environment keeps hidden to score it."""

    obs: dict[str, str]
    hidden: dict = field(default_factory=dict)

    def observation(self, agent: str) -> str:
        return self.obs.get(agent, self.obs.get("*", ""))


@dataclass
class Outcome:
    rewards: dict[str, float]  # per agent
    team: float  # the team reward (cooperative) or the first agent's (competitive)
    success: float  # the environment's headline: solved, or the first agent won
    stats: dict[str, float] = field(default_factory=dict)  # per-agent extras, "agent/<name>/<key>"


class Environment:
    """Subclasses set `alphabet` (characters their observations and answers use),
    `kind` (cooperative / competitive) and implement draw() and outcome()."""

    alphabet = ""
    kind = "cooperative"

    def __init__(self, agent_names: list[str]):
        self.agent_names = agent_names

    def draw(self, rng: np.random.Generator) -> Start:
        raise NotImplementedError

    def outcome(self, start: Start, messages: list[tuple[str, str]]) -> Outcome:
        raise NotImplementedError

    def scripted(self, agent: str, start: Start, rng: random.Random) -> str:
        raise ValueError(f"environment {type(self).__name__} has no scripted player for agent {agent!r}")

    def starts(self, seed: int, step: int, count: int) -> list[Start]:
        rng = np.random.default_rng([seed, step, 11])
        return [self.draw(rng) for _ in range(count)]

    def eval_starts(self, count: int) -> list[Start]:
        """Held-out starts, fixed for an environment (a stream training never draws)."""
        rng = np.random.default_rng([12345, 13])
        return [self.draw(rng) for _ in range(count)]


def last_message(messages: list[tuple[str, str]], agent: str) -> str:
    said = [text for name, text in messages if name == agent]
    return said[-1] if said else ""


@ENVIRONMENTS.register("referential")
class ReferentialGame(Environment):
    """A speaker sees a secret symbol out of `symbols` and sends a message; a listener sees
    only the message and names the symbol. Both get 1 when it is right (chance 1/K)."""

    SYMBOLS = "ABCDEFGH"
    MESSAGES = "abcdefgh"

    def __init__(self, agent_names: list[str], symbols: int = 4, speaker: str = "speaker",
                 listener: str = "listener"):
        super().__init__(agent_names)
        if not 2 <= symbols <= len(self.SYMBOLS):
            raise ValueError(f"agents.env_args.symbols={symbols}: expected 2..{len(self.SYMBOLS)}")
        missing = {speaker, listener} - set(agent_names)
        if missing:
            raise ValueError(f"the referential game needs agents named {sorted(missing)} "
                             f"(agents.env_args.speaker / listener name them); got {agent_names}")
        self.k, self.speaker, self.listener = symbols, speaker, listener
        self.alphabet = self.SYMBOLS[:symbols] + self.MESSAGES[:symbols]

    def draw(self, rng: np.random.Generator) -> Start:
        symbol = self.SYMBOLS[int(rng.integers(self.k))]
        return Start({self.speaker: symbol}, {"symbol": symbol})

    def outcome(self, start: Start, messages: list[tuple[str, str]]) -> Outcome:
        right = float(last_message(messages, self.listener).strip() == start.hidden["symbol"])
        return Outcome({name: right for name in self.agent_names}, right, right)


@ENVIRONMENTS.register("solver_verifier")
class SolverVerifier(Environment):
    """A solver answers an arithmetic problem; a verifier sees the problem and the proposal
    and gives the final answer: an empty message (EOS at once) accepts the proposal,
    anything else replaces it. The team is rewarded for a correct final answer."""

    def __init__(self, agent_names: list[str], task=None, solver: str = "solver", verifier: str = "verifier"):
        super().__init__(agent_names)
        if task is None:
            raise ValueError("solver_verifier draws its problems from the task: needs task=arithmetic")
        missing = {solver, verifier} - set(agent_names)
        if missing:
            raise ValueError(f"solver_verifier needs agents named {sorted(missing)}; got {agent_names}")
        self.task, self.solver, self.verifier = task, solver, verifier
        self.alphabet = task.alphabet

    def draw(self, rng: np.random.Generator) -> Start:
        p = self.task.sample(rng)
        return Start({"*": p.prompt}, {"answer": p.answer})

    def starts(self, seed: int, step: int, count: int) -> list[Start]:
        return [Start({"*": p.prompt}, {"answer": p.answer}) for p in self.task.train_batch(seed, step, count)]

    def eval_starts(self, count: int) -> list[Start]:
        return [Start({"*": p.prompt}, {"answer": p.answer}) for p in self.task.eval_set()[:count]]

    def outcome(self, start: Start, messages: list[tuple[str, str]]) -> Outcome:
        answer = start.hidden["answer"]
        proposal = last_message(messages, self.solver).strip()
        final = float((last_message(messages, self.verifier).strip() or proposal) == answer)
        proposed = float(proposal == answer)
        return Outcome({name: final for name in self.agent_names}, final, final,
                       {f"agent/{self.solver}/correct": proposed})


@ENVIRONMENTS.register("matrix_game")
class MatrixGame(Environment):
    """Two players choose a move at once (rock-paper-scissors by default): +1 to the
    winner, -1 to the loser, 0 each on a tie (zero-sum). A scripted player draws its move
    from `opponent` (probabilities over the moves), a biased mix a policy can exploit."""

    kind = "competitive"
    BEATS = {"R": "S", "P": "R", "S": "P"}  # key beats value

    def __init__(self, agent_names: list[str], opponent: list | None = None):
        super().__init__(agent_names)
        if len(agent_names) != 2:
            raise ValueError(f"matrix_game is for two agents; got {agent_names}")
        self.moves = "RPS"
        self.alphabet = self.moves
        probs = [float(p) for p in (opponent or [1 / 3, 1 / 3, 1 / 3])]
        if len(probs) != 3 or min(probs) < 0 or abs(sum(probs) - 1) > 1e-6:
            raise ValueError(f"agents.env_args.opponent={opponent}: expected 3 probabilities (R, P, S) summing to 1")
        self.opponent = probs

    def draw(self, rng: np.random.Generator) -> Start:
        return Start({"*": ""})

    def scripted(self, agent: str, start: Start, rng: random.Random) -> str:
        return rng.choices(self.moves, weights=self.opponent)[0]

    def outcome(self, start: Start, messages: list[tuple[str, str]]) -> Outcome:
        a, b = self.agent_names
        ma, mb = last_message(messages, a).strip(), last_message(messages, b).strip()
        if ma not in self.BEATS or mb not in self.BEATS:  # an invalid move loses (both invalid: tie)
            score = 0.0 if (ma in self.BEATS) == (mb in self.BEATS) else (1.0 if ma in self.BEATS else -1.0)
        else:
            score = 0.0 if ma == mb else (1.0 if self.BEATS[ma] == mb else -1.0)
        return Outcome({a: score, b: -score}, score, float(score > 0),
                       {f"agent/{a}/win": float(score > 0), f"agent/{b}/win": float(score < 0)})


def build_env(agents_cfg, task=None) -> Environment:
    cls = ENVIRONMENTS.get(agents_cfg.env)
    names = [a.name for a in agents_cfg.agents]
    kwargs = dict(agents_cfg.env_args)
    if cls is SolverVerifier:
        kwargs["task"] = task
    try:
        return cls(names, **kwargs)
    except TypeError as err:
        raise ValueError(f"agents.env_args for {agents_cfg.env}: {err}") from None
