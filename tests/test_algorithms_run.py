"""Every advantage estimator and policy loss runs real iterations on the tiny model
(transformers rollout, DeepSpeed ZeRO-2): finite losses, weights that move, and the
inputs each estimator asks for (per-token KL rewards, ReMax's greedy baseline,
truncated importance weights, a user node in the pipeline)."""
import math
import textwrap

import pytest
import torch

from siirl_core.batch import IterationBatch
from siirl_core.compose import compose_config
from siirl_core.config import ConfigError, to_dict
from siirl_core.pipeline import resolve_pipeline
from siirl_core.worker import RankWorker
from siirl_core.workload import build_kl_controller
from tests.conftest import _free_port, watch_batches


@pytest.fixture(scope="module")
def algo_worker(warm_model, rank_worker):  # rank_worker first: it owns the process group
    cfg = compose_config(["rollout=hf", "trainer.prompts_per_step=8", "trainer.micro_batch_size=64",
                          "trainer.lr=1e-3", "algorithm.kl_in_reward=true", "algorithm.kl_ctrl=adaptive",
                          "algorithm.kl_target=0.01", "algorithm.kl_horizon=100"])
    worker = RankWorker(to_dict(cfg), warm_model, rank=0, world_size=1, master_port=_free_port())
    worker.setup()
    worker.warm_weights = {k: v.clone() for k, v in worker.parts.actor.module.state_dict().items()}
    return worker


def _run_one(worker, iterations: int = 1, seen: list | None = None, **algorithm) -> tuple[dict, float]:
    """More iterations with these algorithm settings; returns the last one's metrics and
    how far the weights moved. `seen` (when given) receives each iteration's context."""
    for k, v in algorithm.items():
        setattr(worker.cfg.algorithm, k, v)
    worker.work.pipeline = resolve_pipeline(worker.cfg)
    if seen is not None:
        watch_batches(worker, seen)
    before = {n: p.detach().clone() for n, p in worker.parts.actor.module.named_parameters()}
    metrics = worker.run_until(worker.step + iterations)
    moved = max((p.detach() - before[n]).abs().max().item() for n, p in worker.parts.actor.module.named_parameters())
    return metrics, moved


ESTIMATORS = ["grpo", "dr_grpo", "rloo", "reinforce_plus_plus", "reinforce_plus_plus_baseline", "remax"]
LOSSES = ["vanilla", "gspo", "gmpo", "cispo", "gpg"]


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_each_estimator_updates_with_finite_loss(algo_worker, estimator):
    m, moved = _run_one(algo_worker, iterations=2, adv_estimator=estimator, policy_loss="vanilla")
    assert math.isfinite(m["actor/pg_loss"]) and math.isfinite(m["actor/grad_norm"])
    assert moved > 0
    if estimator == "remax":
        assert 0 <= m["reward/greedy_baseline_mean"] <= 1


@pytest.mark.parametrize("loss", LOSSES)
def test_each_policy_loss_updates_with_finite_loss(algo_worker, loss):
    m, moved = _run_one(algo_worker, iterations=2, adv_estimator="grpo", policy_loss=loss)
    assert math.isfinite(m["actor/pg_loss"]) and moved > 0


def test_kl_in_reward_steers_its_coefficient(algo_worker):
    algo_worker.work.kl_ctrl = build_kl_controller(algo_worker.cfg.algorithm)
    first, _ = _run_one(algo_worker, adv_estimator="reinforce_plus_plus", policy_loss="vanilla")
    second, _ = _run_one(algo_worker, adv_estimator="reinforce_plus_plus")
    assert first["actor/reward_kl_coef"] == pytest.approx(0.001)
    assert first["actor/reward_kl"] >= 0
    # KL above target 0.01 raises the coefficient, below lowers it, by at most 20% x 64/100 per step.
    expected = 0.001 * (1 + max(-0.2, min(0.2, first["actor/reward_kl"] / 0.01 - 1)) * 64 / 100)
    assert second["actor/reward_kl_coef"] == pytest.approx(expected, rel=1e-6)


def test_rollout_correction_is_measured_when_on(algo_worker):
    m, _ = _run_one(algo_worker, adv_estimator="grpo", rollout_correction="on")
    # The hf backend samples with the trainer's own model: weights are ~1, mismatch ~0.
    assert m["rollout/is_weight_mean"] == pytest.approx(1.0, abs=1e-3)
    assert abs(m["rollout/mismatch_kl"]) < 1e-3
    algo_worker.cfg.algorithm.rollout_correction = "auto"


def test_user_node_in_the_pipeline(algo_worker, tmp_path):
    path = tmp_path / "my_nodes.py"
    path.write_text(textwrap.dedent("""
        from siirl_core.batch import declared

        @declared(reads=("scores",), writes=("scores",))
        def flip_scores(parts, batch, bag):
            batch.scores = 1.0 - batch.scores  # reward the wrong answers
            bag.add("custom/flipped_mean", float(batch.scores.mean()))
    """))
    nodes = ["rollout", "reward", f"{path}:flip_scores", "old_logprobs", "ref_logprobs", "advantage", "update",
             "sync"]
    m, moved = _run_one(algo_worker, adv_estimator="grpo", pipeline=nodes)
    assert m["custom/flipped_mean"] == pytest.approx(1 - m["reward/mean"])
    assert "timing_s/flip_scores" in m and moved > 0
    algo_worker.cfg.algorithm.pipeline = []
    with pytest.raises(ConfigError, match=r"algorithm.pipeline entry 'shuffle' is neither a built-in node"):
        compose_config(["algorithm.pipeline=[rollout,shuffle]"])
    assert torch.isfinite(torch.tensor(m["actor/pg_loss"]))


def test_dynamic_sampling_keeps_only_informative_groups(algo_worker):
    # From the warm start: after the tests before it (lr 1e-3, one of them rewarding wrong
    # answers) the policy may be too sure of itself to give 8 informative groups in 8 rounds.
    algo_worker.parts.actor.module.load_state_dict(algo_worker.warm_weights)
    seen: list = []
    try:
        m, moved = _run_one(algo_worker, seen=seen, adv_estimator="grpo", policy_loss="vanilla", dynamic_sampling=True,
                            max_sampling_rounds=8, overlong_buffer=2, overlong_penalty_factor=0.5,
                            clip_ratio_high=0.28)
        rewards = kept_group_rewards(seen[-1])
    finally:
        _reset(algo_worker)
    assert m["dapo/batch_filled"] == 1.0 and 1 <= m["dapo/sampling_rounds"] <= 8
    assert 0 < m["dapo/kept_group_frac"] <= 1
    # Every kept group has differing rewards: each group's std is > 0.
    assert all(r.max() > r.min() for r in rewards) and len(rewards) == 8
    assert moved > 0


def test_dynamic_sampling_stops_at_its_bound_and_says_so(algo_worker, caplog):
    # A constant reward makes every group uninformative: the bound must stop the search.
    nodes = ["dynamic_sampling", "old_logprobs", "ref_logprobs", "advantage", "update", "sync"]
    algo_worker.work.reward.fn, real = (lambda *a, **k: 0.5), algo_worker.work.reward.fn
    try:
        with caplog.at_level("WARNING", logger="siirl.pipeline"):
            m, _ = _run_one(algo_worker, dynamic_sampling=True, max_sampling_rounds=2, pipeline=nodes)
    finally:
        algo_worker.work.reward.fn = real
        _reset(algo_worker)
    assert m["dapo/batch_filled"] == 0.0 and m["dapo/sampling_rounds"] == 2 and m["dapo/kept_group_frac"] == 0
    assert "only 0 of 8 groups had differing rewards after 2 rounds" in caplog.text


def kept_group_rewards(batch) -> list[torch.Tensor]:
    """The kept groups' rewards of an iteration (the node leaves them in its batch)."""
    g = batch.tensors.group_index
    return [batch.scores[g == i] for i in g.unique()]


def _reset(worker) -> None:
    for k, v in {"dynamic_sampling": False, "overlong_buffer": 0, "clip_ratio_high": 0.2, "pipeline": []}.items():
        setattr(worker.cfg.algorithm, k, v)
    worker.work.pipeline = resolve_pipeline(worker.cfg)


def test_ppo_with_a_critic_updates_policy_and_values(algo_worker):
    algo_worker.work.critic = algo_worker.work.build_critic(algo_worker.model_dirs["policy"])
    critic_before = {n: p.detach().clone() for n, p in algo_worker.work.critic.actor.module.named_parameters()}
    try:
        m, moved = _run_one(algo_worker, adv_estimator="gae", lam=0.95)
    finally:
        algo_worker.cfg.algorithm.adv_estimator = "grpo"
        algo_worker.work.pipeline = resolve_pipeline(algo_worker.cfg)
    assert "timing_s/critic_update" in m and math.isfinite(m["critic/vf_loss"]) and moved > 0
    assert 0 <= m["critic/vf_clipfrac"] <= 1
    critic_moved = max((p.detach() - critic_before[n]).abs().max().item()
                       for n, p in algo_worker.work.critic.actor.module.named_parameters())
    assert critic_moved > 0


def test_full_kl_as_loss_and_in_reward(algo_worker):
    try:
        m, moved = _run_one(algo_worker, adv_estimator="grpo", kl_coef=0.05, kl_estimator="full", kl_in_reward=False)
        assert m["actor/kl"] >= 0 and math.isfinite(m["actor/kl"]) and moved > 0
        m, _ = _run_one(algo_worker, kl_coef=0.0, kl_in_reward=True)
        assert m["actor/reward_kl"] >= 0 and math.isfinite(m["actor/reward_kl"])
    finally:
        for k, v in {"kl_coef": 0.0, "kl_estimator": "k3", "kl_in_reward": True}.items():
            setattr(algo_worker.cfg.algorithm, k, v)


def test_on_policy_update_reuses_its_forward_as_the_old_logprobs(algo_worker):
    """The skipped no-grad pass would have given the same old log-probs as the update's
    own forward pass (same weights, same inputs)."""
    from siirl_core.algorithms.entropy import logprobs_from_logits
    from siirl_core.metrics import MetricBag
    from siirl_core.pipeline import node_rollout
    from siirl_core.training.fused import on_policy_single_update
    from siirl_core.training.logprobs import compute_logprobs, response_logits
    from siirl_core.training.micro_batches import MicroBatching

    assert on_policy_single_update(compose_config([]))
    assert not on_policy_single_update(compose_config(["trainer.ppo_epochs=2"]))
    batch = IterationBatch(step=algo_worker.step + 1)
    node_rollout(algo_worker.parts, batch, MetricBag())
    t = batch.tensors
    separate = compute_logprobs(algo_worker.parts.actor.module, t.input_ids, t.attention_mask, t.response_len,
                                MicroBatching(64))
    logits = response_logits(algo_worker.parts.actor.engine, t.input_ids, t.attention_mask, t.response_len)
    in_update = logprobs_from_logits(logits, t.input_ids[:, -t.response_len:]).detach()
    mask = t.response_mask
    torch.testing.assert_close(in_update * mask, separate * mask, rtol=0, atol=1e-5)


def test_nan_rewards_stop_the_run_before_any_weight_turns_nan(algo_worker):
    """A user reward returning NaN for every sample scores reward.error_score, and after
    reward.max_error_batches iterations with more than max_error_rate failing, stops."""
    from siirl_core.rewards import RewardError, RewardScorer

    real, cfg = algo_worker.work.reward, algo_worker.cfg.reward
    algo_worker.work.reward = RewardScorer(lambda *a: float("nan"), "nan_reward", {}, False, 5.0, "score", 0.0,
                                      cfg.max_error_rate, cfg.max_error_batches)
    start = algo_worker.step
    try:
        with pytest.raises(RewardError, match=r"nan_reward failed on 64 of 64 samples, more than "
                                              r"reward.max_error_rate=0.5, in 3 batches in a row.*returned nan"):
            _run_one(algo_worker, iterations=5, adv_estimator="grpo")  # one reward batch per iteration
    finally:
        algo_worker.work.reward = real
    assert algo_worker.step == start + 2  # the third iteration stopped in its reward node
    assert all(torch.isfinite(p).all() for p in algo_worker.parts.actor.module.parameters())


def test_nan_advantages_skip_their_step_and_too_many_in_a_row_stop_the_run(algo_worker, tmp_path):
    """A custom node writing NaN advantages (a realistic user bug) at chosen steps: such a
    step is skipped (no weight moves), a good step after it trains, and the fourth skipped
    step in a row (trainer.max_skipped_steps=3) stops the run with the weights of the last
    good step, still finite."""
    from siirl_core.training.actor import NonFiniteUpdate

    s0 = algo_worker.step
    nan_steps = {s0 + 1, s0 + 3, s0 + 4, s0 + 5, s0 + 6}
    path = tmp_path / "nodes.py"
    path.write_text("import math\nfrom siirl_core.batch import declared\n\n"
                    "@declared(reads=('advantages',), writes=('advantages',))\n"
                    "def nan_advantages(parts, batch, bag):\n"
                    f"    if batch.step in {sorted(nan_steps)}:\n"
                    "        batch.advantages = batch.advantages * math.nan\n")
    cfg = algo_worker.cfg
    assert cfg.trainer.max_skipped_steps == 3
    cfg.algorithm.pipeline = ["rollout", "reward", "old_logprobs", "ref_logprobs", "advantage",
                              f"{path}:nan_advantages", "update", "sync"]

    def weights() -> dict:
        return {n: p.detach().clone() for n, p in algo_worker.parts.actor.module.named_parameters()}

    def same(a: dict, b: dict) -> bool:
        return all(torch.equal(a[n], b[n]) for n in a)

    try:
        algo_worker.work.pipeline = resolve_pipeline(cfg)
        before = weights()
        skipped = algo_worker.run_until(s0 + 1)
        assert skipped["actor/skipped_steps"] == 1 and not math.isfinite(skipped["actor/grad_norm"])
        assert same(before, weights())
        trained = algo_worker.run_until(s0 + 2)
        assert trained["actor/skipped_steps"] == 0 and math.isfinite(trained["actor/grad_norm"])
        good = weights()
        assert not same(before, good)
        for step in (s0 + 3, s0 + 4, s0 + 5):
            assert algo_worker.run_until(step)["actor/skipped_steps"] == 1
        with pytest.raises(NonFiniteUpdate, match=r"4 optimizer steps in a row had a NaN or infinite loss or "
                                                  r"gradient and were skipped \(trainer.max_skipped_steps=3\)"):
            algo_worker.run_until(s0 + 6)
    finally:
        cfg.algorithm.pipeline = []
        algo_worker.work.pipeline = resolve_pipeline(cfg)
    assert algo_worker.step == s0 + 5
    after = weights()
    assert same(good, after)
    assert all(bool(torch.isfinite(p).all()) for p in after.values())
