"""Multi-agent training in process (one rank, real DeepSpeed engines): exploiting a
biased opponent, self-play with two policies, one policy shared by two agents, and
the alternating schedule, and the signalling bonus on its own."""
import math
import os
from collections import Counter

import pytest
import torch

from siirl_core.agents.config_checks import policy_alphabet
from siirl_core.worker import RankWorker
from siirl_core.compose import compose_config
from siirl_core.config import to_dict
from siirl_core.models import create_tiny_model
from tests.conftest import _free_port, watch_batches

pytestmark = pytest.mark.slow


def make_worker(tmp_path, overrides: list[str]) -> RankWorker:
    cfg = compose_config(overrides)
    paths = {pid: create_tiny_model(str(tmp_path / pid), policy_alphabet(cfg), size=cfg.agents.policy(pid).size,
                                    seed=cfg.trainer.seed + i, init_std=cfg.agents.policy(pid).init_std)
             for i, pid in enumerate(cfg.agents.trained_policies())}
    worker = RankWorker(to_dict(cfg), paths, rank=0, world_size=1, master_port=_free_port())
    worker.setup()
    return worker


def test_policy_learns_to_exploit_a_biased_opponent(tmp_path):
    # The opponent plays rock 80% of the time: always paper wins 80%.
    w = make_worker(tmp_path, ["agents=rps_biased"])
    before = w.evaluate()["val/accuracy"]
    w.run_until(w.cfg.trainer.steps)
    after = w.evaluate()
    assert before < 0.4 and after["val/accuracy"] >= 0.6, (before, after)
    assert after["val/agent/player/win"] == after["val/accuracy"]
    assert after["val/agent/player/reward/mean"] == pytest.approx(-after["val/agent/opponent/reward/mean"])


def test_self_play_trains_both_policies_and_logs_both_sides(tmp_path):
    w = make_worker(tmp_path, ["agents=rps_selfplay"])
    assert list(w.policies) == ["alice", "bob"] and w.policies["alice"].actor is not w.policies["bob"].actor
    for step in range(1, 4):
        m = w.run_until(step)
        assert m["agent/alice/reward/mean"] == pytest.approx(-m["agent/bob/reward/mean"])  # zero-sum
        for pid in ("alice", "bob"):
            assert m[f"policy/{pid}/updated"] == 1.0 and m[f"policy/{pid}/actor/grad_norm"] > 0
            assert f"agent/{pid}/win" in m


def test_one_policy_shared_by_speaker_and_listener(tmp_path):
    w = make_worker(tmp_path, ["agents=referential", "agents.agents.0.policy=shared", "agents.agents.1.policy=shared",
                               "~agents.policies.speaker", "~agents.policies.listener", "+agents.policies.shared.init=base"])
    assert list(w.policies) == ["shared"]
    m = w.run_until(2)
    # Both agents' turns train the one engine: 16 starts x 16 episodes x 2 turns.
    assert m["perf/rollout_tokens"] == 512
    assert {"agent/speaker/reward/mean", "agent/listener/reward/mean", "policy/shared/actor/pg_loss"} <= set(m)


def test_alternating_schedule_updates_one_policy_per_step(tmp_path):
    w = make_worker(tmp_path, ["agents=rps_selfplay", "agents.schedule=alternating"])
    params = {pid: [p.detach().clone() for p in pol.actor.module.parameters()] for pid, pol in w.policies.items()}
    m = w.run_until(1)
    assert "policy/alice/updated" in m and "policy/bob/updated" not in m
    moved = {pid: any((p != q).any() for p, q in zip(pol.actor.module.parameters(), params[pid]))
             for pid, pol in w.policies.items()}
    assert moved == {"alice": True, "bob": False}
    assert "policy/bob/updated" in w.run_until(2)


def test_debate_rounds_with_policies_of_different_sizes(tmp_path):
    w = make_worker(tmp_path, ["agents=rps_selfplay", "agents.graph=rounds", "agents.rounds=2",
                               "+agents.policies.bob.size=mini", "agents.agents.1.template='M{history}:'"])
    assert w.policies["bob"].actor.total_parameters() > w.policies["alice"].actor.total_parameters()
    seen = watch_batches(w)
    m = w.run_until(1)
    assert m["perf/rollout_tokens"] == 16 * 8 * 2 * 2  # starts x episodes x rounds x agents, one token each
    bob = [t for t in seen[-1].turns if t.agent == "bob"]
    first, second = bob[0], bob[len(bob) // 2]  # episode 0 in round 1, then in round 2
    # Round 1: bob sees alice's move; round 2: all three earlier moves.
    assert len(w.policies["bob"].tokenizer.decode(first.prompt_ids, skip_special_tokens=True)) == len("M?:")
    assert len(w.policies["bob"].tokenizer.decode(second.prompt_ids, skip_special_tokens=True)) == len("M???:")


def speaker_distributions(w) -> dict[str, list[float]]:
    """The speaker's message distribution for each symbol, by a plain forward pass."""
    tok, module = w.policies["speaker"].tokenizer, w.policies["speaker"].actor.module
    ids = [tok.convert_tokens_to_ids(c) for c in w.cfg.agents.agents[0].allowed]
    with torch.no_grad():
        return {s: torch.softmax(module(input_ids=torch.tensor([tok(f"S{s}:")["input_ids"]])).logits[0, -1, ids],
                                 -1).tolist() for s in "ABCD"}


def plain_mutual_information(dists: dict[str, list[float]], weight: dict[str, float]) -> float:
    """I(symbol; message) with symbols drawn by `weight`: H(marginal) - E[H(message | symbol)]."""
    def h(p):
        return -sum(x * math.log(x) for x in p if x > 0)
    marginal = [sum(weight[s] * dists[s][m] for s in dists) for m in range(len(dists["A"]))]
    return h(marginal) - sum(weight[s] * h(dists[s]) for s in dists)


@pytest.mark.parametrize("bonus", [3.0, 0.0])
def test_signalling_bonus_alone_moves_the_speaker_towards_a_code(tmp_path, bonus):
    # The listener may only answer A, so every episode of one symbol gets the same team
    # reward: the advantage is zero and only the bonus can train the speaker.
    w = make_worker(tmp_path, ["agents=referential", "agents.agents.1.allowed=A", "algorithm.entropy_coef=0",
                               f"agents.agents.0.signalling_bonus={bonus}", "trainer.prompts_per_step=8", "rollout.n=8"])
    seen = watch_batches(w)
    before = speaker_distributions(w)
    m = w.run_until(1)
    symbols = Counter(t.prompt_ids[-2] for t in seen[0].turns if t.agent == "speaker")
    tok = w.policies["speaker"].tokenizer
    weight = {s: symbols[tok.convert_tokens_to_ids(s)] / sum(symbols.values()) for s in "ABCD"}
    uniform = dict.fromkeys("ABCD", 0.25)
    w.run_until(4)
    gain = plain_mutual_information(speaker_distributions(w), uniform) - plain_mutual_information(before, uniform)
    if bonus:
        # The logged value is the batch's, measured before the step's update.
        assert m["agent/speaker/signalling/mutual_info"] == pytest.approx(plain_mutual_information(before, weight),
                                                                         abs=1e-4)
        assert gain > 0.3, gain
    else:
        assert "agent/speaker/signalling/mutual_info" not in m
        assert abs(gain) < 1e-4, gain


def test_agent_policies_train_lora_adapters(tmp_path):
    """model.lora applies to every agent policy, as to a single-agent run's one policy:
    only the adapters move, a checkpoint holds only them for each policy, and a restore
    gives them back."""
    overrides = ["agents=rps_selfplay", "model.lora.rank=4", "trainer.lr=1e-2"]
    w = make_worker(tmp_path, overrides)
    before = {pid: {n: p.detach().clone() for n, p in pol.actor.module.named_parameters()}
              for pid, pol in w.policies.items()}
    w.run_until(1)
    for pid, pol in w.policies.items():
        moved = {n for n, p in pol.actor.module.named_parameters() if not torch.equal(p, before[pid][n])}
        assert moved and all(".lora_" in n for n in moved), pid
    folder = w.save(str(tmp_path / "run"), {})
    for pid in ("alice", "bob"):
        engine = os.path.join(folder, "policies", pid, "engine", "state", "mp_rank_00_model_states.pt")
        weights = os.path.join(folder, "policies", pid, "hf", "model.safetensors")
        assert os.path.getsize(engine) < 0.5 * os.path.getsize(weights)  # adapters only
    fresh = make_worker(tmp_path / "fresh", overrides)
    fresh.restore(folder, 1)
    for pid, pol in w.policies.items():
        restored = dict(fresh.policies[pid].actor.module.named_parameters())
        assert all(torch.equal(p, restored[n]) for n, p in pol.actor.module.named_parameters()), pid
