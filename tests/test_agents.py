"""Multi-agent building blocks, by hand: credit assignment, who sees what in each
interaction graph, environment outcomes, action masks in sampling and training, and
config errors that name the key."""
import re
import subprocess

import pytest
import torch

from siirl_core.agents.credit import per_agent_credit, team_credit
from siirl_core.agents.envs import MatrixGame, ReferentialGame, SolverVerifier, Start
from siirl_core.agents.episodes import allowed_ids, allowed_mask, render, schedule
from siirl_core.algorithms import ADVANTAGE_ESTIMATORS
from siirl_core.compose import compose_config
from siirl_core.config import AgentSpec, ConfigError
from siirl_core.data import ArithmeticTask
from siirl_core.models import create_tiny_model, load_causal_lm, load_tokenizer
from siirl_core.rollout.base import SamplingConfig
from siirl_core.rollout.hf_engine import HFRollout
from siirl_core.training.logprobs import response_logits
from tests.conftest import ROOT, siirl_cli

GRPO = ADVANTAGE_ESTIMATORS.get("grpo")


def test_per_agent_credit_normalises_each_agent_within_its_start():
    # Two starts (groups 0, 1) of two episodes; agent 0 wins episode 0, agent 1 episode 3.
    rewards = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    adv = per_agent_credit(rewards, rewards.sum(1), torch.tensor([0, 0, 1, 1]), GRPO)
    # (r - mean) / (std + eps), std unbiased: [1, 0] -> [0.7071, -0.7071]; a flat group -> 0.
    expected = torch.tensor([[0.7071, 0.0], [-0.7071, 0.0], [0.0, -0.7071], [0.0, 0.7071]])
    assert torch.allclose(adv, expected, atol=1e-4)


def test_team_credit_gives_every_agent_the_team_advantage():
    rewards = torch.tensor([[1.0, -1.0], [0.0, 0.0], [3.0, 0.0], [1.0, 0.0]])
    team = torch.tensor([1.0, 0.0, 3.0, 1.0])
    adv = team_credit(rewards, team, torch.tensor([0, 0, 1, 1]), GRPO)
    expected = torch.tensor([0.7071, -0.7071, 0.7071, -0.7071])[:, None].expand(-1, 2)
    assert torch.allclose(adv, expected, atol=1e-4)


def _agents(*names):
    return [AgentSpec(name=n, policy=n) for n in names]


def test_graphs_decide_turn_order_and_visibility():
    a, b, c = _agents("a", "b", "c")
    assert [(s.name, sees) for s, sees in schedule([a, b], "chain", 1)] == [("a", True), ("b", True)]
    assert [s.name for s, _ in schedule([a, b], "rounds", 3)] == ["a", "b"] * 3
    assert [(s.name, sees) for s, sees in schedule([a, b, c], "parallel", 1)] == [
        ("a", False), ("b", False), ("c", True)]
    visible = [("a", "x"), ("b", "y"), ("a", "z")]
    assert render("{obs}|{history}|{a}{b}{c}", "o", visible) == "o|xyz|zy"


def test_environment_outcomes():
    ref = ReferentialGame(["speaker", "listener"], symbols=4)
    start = Start({"speaker": "C"}, {"symbol": "C"})
    assert ref.outcome(start, [("speaker", "c"), ("listener", "C")]).rewards == {"speaker": 1.0, "listener": 1.0}
    assert ref.outcome(start, [("speaker", "c"), ("listener", "A")]).success == 0.0
    sv = SolverVerifier(["solver", "verifier"], task=ArithmeticTask())
    start = Start({"*": "2+3="}, {"answer": "5"})
    accepted = sv.outcome(start, [("solver", "5"), ("verifier", "")])  # EOS at once: keep the proposal
    assert accepted.team == 1.0 and accepted.stats == {"agent/solver/correct": 1.0}
    fixed = sv.outcome(start, [("solver", "6"), ("verifier", "5")])
    assert fixed.team == 1.0 and fixed.stats == {"agent/solver/correct": 0.0}
    game = MatrixGame(["p", "q"])
    assert game.outcome(Start({}), [("p", "P"), ("q", "R")]).rewards == {"p": 1.0, "q": -1.0}
    assert game.outcome(Start({}), [("p", "S"), ("q", "R")]).rewards == {"p": -1.0, "q": 1.0}
    assert game.outcome(Start({}), [("p", "S"), ("q", "S")]).rewards == {"p": 0.0, "q": 0.0}
    assert game.outcome(Start({}), [("p", "x"), ("q", "S")]).rewards == {"p": -1.0, "q": 1.0}  # invalid loses


def test_masked_sampling_through_the_rollout_engine(tmp_path):
    """Agents sample through the rollout engine: only their action vocabulary, greedy is
    the argmax over it (a plain loop of full forward passes, by hand), and the log-probs
    are those of the unrestricted logits, as the trainer recomputes them."""
    path = create_tiny_model(str(tmp_path / "m"), "ABCDabcd:S", seed=0)
    model, tok = load_causal_lm(path), load_tokenizer(path)
    engine = HFRollout(model, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id)
    allowed = allowed_ids(tok, "ab")
    prompts = [tok("SA:")["input_ids"], tok("SB:")["input_ids"]] * 16
    rb = engine.generate(prompts, SamplingConfig(n=1, max_new_tokens=3, allowed_token_ids=allowed), seed=0)
    texts = {tok.decode(r) for r in rb.response_ids}
    assert texts <= {x + y + z for x in "ab" for y in "ab" for z in "ab"} and len(texts) > 2
    ids = torch.tensor([p + r for p, r in zip(prompts, rb.response_ids)])
    logits = response_logits(model, ids, torch.ones_like(ids), 3)
    recomputed = torch.log_softmax(logits, -1).gather(-1, ids[:, -3:, None])[..., 0]
    assert torch.allclose(recomputed, torch.tensor(rb.response_logprobs), atol=1e-5)

    greedy = engine.generate(prompts[:2], SamplingConfig(n=1, max_new_tokens=3, greedy=True,
                                                         allowed_token_ids=allowed), seed=0).response_ids
    for prompt, response in zip(prompts[:2], greedy):
        seq = list(prompt)
        with torch.no_grad():
            for _ in range(3):
                last = model(input_ids=torch.tensor([seq])).logits[0, -1]
                seq.append(max(allowed, key=lambda i: float(last[i])))
        assert response == seq[len(prompt):]
    assert torch.equal(allowed_mask(tok, "ab", len(tok)).nonzero()[:, 0], torch.tensor(sorted(allowed)))
    with pytest.raises(ValueError, match="'z' is not in the policy's vocabulary"):
        allowed_ids(tok, "az")


@pytest.mark.parametrize("override,message", [
    ("agents.env=poker", "agents.env='poker' is not allowed"),
    ("agents.agents.1.policy=lisener", "agents.agents[1].policy='lisener' is not declared under agents.policies"),
    ("agents.agents.1.template='L{speeker}:'", "agents.agents[1].template uses ['speeker']"),
    ("algorithm.adv_estimator=gae", "algorithm.adv_estimator='gae' is not allowed with agents"),
    ("agents.credit=blame", "agents.credit='blame' is not allowed"),
    ("agents.env_args.symbols=20", "agents.env_args.symbols=20: expected 2..8"),
    ("trainer.ppo_epochs=2", "needs trainer.ppo_epochs=1"),
    ("+agents.policies.speaker.sise=small", "agents.policies.speaker: PolicySpec.__init__() got an unexpected keyword "
                                            "argument 'sise'; expected keys init, size, lr, init_std"),
    ("agents.policies.speaker.init=/nowhere", "agents.policies.speaker.init='/nowhere': expected base, warm_start or"),
    ("agents.policies.speaker.init_std=0", "agents.policies.speaker.init_std=0: expected > 0"),
    ("agents.agents.0.signalling_bonus=-1", "agents.agents[0].signalling_bonus=-1.0: expected >= 0"),
])
def test_bad_agent_configs_name_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        compose_config(["agents=referential", override])


def test_presets_compose():
    for preset in ("referential", "solver_verifier", "rps_biased", "rps_selfplay"):
        cfg = compose_config([f"agents={preset}"])
        assert cfg.agents.env and len(cfg.agents.agents) == 2
    assert compose_config([]).agents.env == ""  # single-agent by default


def test_single_policy_commands_refuse_a_multi_agent_config():
    proc = subprocess.run(siirl_cli() + ["retrain", "agents=referential"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "agents.env='referential': `siirl retrain` takes single-policy runs" in proc.stderr
