"""When the update may reuse the rollout's forward passes (trainer.fused_update).

With one optimizer step per batch on the samples just drawn, the update's forward pass
would recompute, with the same weights, the logits the `hf` rollout already computed
while sampling. Kept with their autograd graph, they make that pass unnecessary: the
update back-propagates through the rollout itself. Same loss, same gradient (checked in
tests/test_fused_update.py); the price is that the whole rank batch's activations are
held from sampling until the update, as one micro-batch of that size would hold them.
"""
from __future__ import annotations

from siirl_core.config import ConfigError
from siirl_core.config_rules import config_rule, one_of


def on_policy_single_update(cfg) -> bool:
    """One optimizer step per batch: the old log-probs are the update's own forward pass
    (same weights), so the separate no-grad pass is skipped, as TRL does. Not when the
    KL goes into the reward, which needs them before the advantages."""
    return cfg.trainer.ppo_epochs == 1 and cfg.trainer.mini_batches == 1 and not cfg.algorithm.kl_in_reward


def fused_update_blockers(cfg) -> list[str]:
    """Why the update cannot back-propagate through the rollout; empty when it can."""
    per_rank = cfg.samples_per_rank()
    checks = [
        (cfg.rollout.backend != "hf", f"rollout.backend={cfg.rollout.backend} samples outside the trainer's model"),
        (not on_policy_single_update(cfg),
         "needs one optimizer step on fresh samples (trainer.ppo_epochs=1, trainer.mini_batches=1, "
         "algorithm.kl_in_reward=false)"),
        (cfg.trainer.micro_batch_size < per_rank,
         f"trainer.micro_batch_size={cfg.trainer.micro_batch_size} is below the {per_rank} samples per rank "
         "(the rollout's graph is one micro-batch)"),
        (cfg.algorithm.dynamic_sampling, "algorithm.dynamic_sampling re-samples and drops groups"),
        (bool(cfg.algorithm.pipeline), "algorithm.pipeline is customised (its nodes may change the batch)"),
        (cfg.trainer.zero_stage == 3, "trainer.zero_stage=3 gathers parameters per forward pass"),
        (cfg.trainer.gradient_checkpointing, "trainer.gradient_checkpointing recomputes the activations that "
         "the fused update keeps from sampling"),
        (cfg.model.lora.rank > 0, "model.lora samples through the adapters' own forward (not the grouped decoder)"),
        (cfg.trainer.max_tokens_per_micro_batch > 0,
         "trainer.max_tokens_per_micro_batch splits the update into micro-batches (the rollout's graph is one)"),
        (bool(cfg.agents.env), "multi-agent runs sample with their own loop"),
    ]
    return [why for blocked, why in checks if blocked]


def fused_update_active(cfg) -> bool:
    """trainer.fused_update: on (an error if blocked, see config_checks.validate), off, or auto
    (on exactly when nothing blocks it)."""
    return cfg.trainer.fused_update != "off" and not fused_update_blockers(cfg)


@config_rule("trainer.fused_update")
def _fused_update_rule(cfg) -> None:
    one_of("trainer.fused_update", cfg.trainer.fused_update, {"auto", "on", "off"})
    blockers = fused_update_blockers(cfg)
    if cfg.trainer.fused_update == "on" and blockers:
        raise ConfigError("trainer.fused_update=on is not possible here: " + "; ".join(blockers)
                          + " (use auto or off)")


def skips_zero_advantage(cfg) -> bool:
    """trainer.skip_zero_advantage, where leaving all-zero-advantage rows out is the same
    loss and gradient: one step on fresh samples (the ratio of every row is exactly 1, so
    its loss is -advantage), no KL penalty and no entropy bonus in the loss."""
    algo = cfg.algorithm
    return (cfg.trainer.skip_zero_advantage and on_policy_single_update(cfg) and algo.kl_coef == 0
            and algo.entropy_coef == 0)


def fused_backward_cheaper(active_rows: int, rows: int, prompts: int, prompt_width: int, seq_width: int,
                           steps: int) -> bool:
    """Whether back-propagating through the rollout's graph (all rows: each prompt's prefill
    and every fed-back token; 4 FLOPs per parameter and token) costs no more than a
    separate forward and backward pass (6 per parameter and token) over only the rows
    with a non-zero advantage, each its padded prompt and response."""
    fused_tokens = prompts * prompt_width + rows * max(0, steps - 1)
    return 4 * fused_tokens <= 6 * active_rows * seq_width
