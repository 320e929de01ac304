"""The pipeline's training nodes: the policy's old log-probs, the update (fused with the
rollout's graph, or its own passes over the rows that carry a gradient), the critic's
values and update, and the weight sync. Each is node(parts, batch, bag) over an
`IterationBatch`; pipeline.NODES declares what each reads and writes."""
from __future__ import annotations

import torch

from siirl_core.algorithms import masked_mean
from siirl_core.algorithms.entropy import entropy_from_logits, logprobs_from_logits
from siirl_core.algorithms.policy_loss import truncated_is_weights
from siirl_core.algorithms.value import clipped_value_loss
from siirl_core.batch import IterationBatch
from siirl_core.policy import sync_rollout
from siirl_core.training.actor import policy_loss_terms
from siirl_core.training.critic import response_values
from siirl_core.training.fused import fused_backward_cheaper, on_policy_single_update, skips_zero_advantage
from siirl_core.training.logprobs import compute_logprobs, response_logits
from siirl_core.training.micro_batches import micro_batching
from siirl_core.training.update_loop import run_update, share_mode


def _record_mismatch(parts, old, rollout_lp, mask, bag):
    """Rollout-engine vs trainer log-probs of the same tokens; the truncated IS weights when on."""
    tokens = float(mask.sum())
    bag.add("rollout/logprob_abs_diff", masked_mean((old - rollout_lp).abs(), mask), weight=tokens)
    if not rollout_correction_on(parts.cfg):
        return None
    weights, m = truncated_is_weights(old, rollout_lp, mask, cap=parts.cfg.algorithm.tis_cap)
    for k, v in m.items():
        bag.add(f"rollout/{k}", v, weight=tokens)
    return weights


def node_old_logprobs(parts, b: IterationBatch, bag):
    t = b.tensors
    if on_policy_single_update(parts.cfg):
        b.old_log_probs = b.is_weights = None  # taken from the update's forward pass
        return
    b.old_log_probs = compute_logprobs(parts.actor.module, t.input_ids, t.attention_mask, t.response_len,
                                       micro_batching(parts.cfg), parts.cfg.rollout.temperature)
    b.is_weights = _record_mismatch(parts, b.old_log_probs, t.rollout_log_probs, t.response_mask, bag)


def rollout_correction_on(cfg) -> bool:
    """Truncated importance sampling against the rollout engine's log-probs: on by default
    when the rollout engine is not the trainer's own model (vLLM)."""
    mode = cfg.algorithm.rollout_correction
    return mode == "on" or (mode == "auto" and cfg.rollout.backend != "hf")


def node_values(parts, b: IterationBatch, bag):
    """The critic's V(s_t) for every response token, before any update this step."""
    t = b.tensors
    b.values = parts.critic.values(t.input_ids, t.attention_mask, t.response_len, micro_batching(parts.cfg))  # [B, R]
    bag.add("critic/values_mean", masked_mean(b.values, t.response_mask), weight=float(t.response_mask.sum()))


def node_critic_update(parts, b: IterationBatch, bag):
    """Fit the critic to the GAE returns with the clipped value loss, same epochs and
    mini-batches as the policy."""
    cfg, t = parts.cfg, b.tensors
    gen = torch.Generator().manual_seed(cfg.trainer.seed * 7927 + b.step)

    def micro_loss(micro, share):
        v = response_values(parts.critic.engine, t.input_ids[micro], t.attention_mask[micro], t.response_len,
                            cfg.trainer.padding_free)  # on the critic's device
        old_v, returns, mask = (x[micro].to(v.device) for x in (b.values, b.returns, t.response_mask))
        loss, m = clipped_value_loss(v, old_v, returns, mask, clip_range=cfg.critic.value_clip,
                                     loss_agg_mode=cfg.algorithm.loss_agg_mode)
        return loss * share, {"vf_loss": loss.detach(), **m}, None

    minibatches = [mb for _ in range(cfg.trainer.ppo_epochs)
                   for mb in _minibatches(t.input_ids.shape[0], cfg.trainer.mini_batches, gen)]
    run_update(parts.critic.actor, minibatches, micro_batching(cfg), micro_loss, t.response_mask, t.attention_mask,
               cfg.algorithm.loss_agg_mode, bag, prefix="critic/", step_prefix="critic/")


def _minibatches(n: int, mini_batches: int, generator: torch.Generator) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=generator) if mini_batches > 1 else torch.arange(n)
    return list(perm.chunk(mini_batches))


def _computed_rows(b: IterationBatch, micro: torch.Tensor) -> torch.Tensor:
    """[b] bool: the micro-batch's rows the update runs: all, or with b.update_rows
    those rows, at least one (so every rank back-propagates)."""
    chosen = b.update_rows
    inside = torch.ones(len(micro), dtype=torch.bool) if chosen is None else chosen[micro].clone()
    if not bool(inside.any()):
        inside[0] = True
    return inside


def _micro_loss(parts, b: IterationBatch, micro, inside, bag):
    """The policy loss of one micro-batch, from one forward pass over its `inside` rows (or
    the rollout's, fused: then all rows). The other rows' log-probs are a constant 0 with
    old = new, i.e. ratio 1 and, with their zero advantages, a loss of exactly 0, as they
    would have had."""
    cfg, t = parts.cfg, b.tensors
    kept, computed = b.rollout_logits, micro[inside]
    if kept is not None:  # [B, S, V] with S >= R: every response ends within the sampled steps
        logits = kept[computed.to(kept.device)][:, :t.response_len]
    else:
        logits = response_logits(parts.actor.engine, t.input_ids[computed], t.attention_mask[computed],
                                 t.response_len, cfg.rollout.temperature,
                                 cfg.trainer.padding_free)  # [b, R, V], on the actor's device

    def rows(x, which=micro):  # rows of a batch tensor (kept on the CPU), where the logits are
        return None if x is None else x[which].to(logits.device)

    lp = logprobs_from_logits(logits, rows(t.input_ids, computed)[:, -t.response_len:])
    entropy = entropy_from_logits(logits)
    mask = rows(t.response_mask)
    if len(computed) < len(micro):  # back to the micro-batch's rows
        at = torch.nonzero(inside).squeeze(1).to(logits.device)
        lp = torch.zeros(len(micro), lp.shape[1], dtype=lp.dtype, device=lp.device).index_copy(0, at, lp)
        entropy = torch.zeros_like(lp).index_copy(0, at, entropy)
    measured = mask * inside.to(mask.device)[:, None]  # tokens whose log-probs and entropy were computed
    full_kl = cfg.algorithm.kl_estimator == "full" and cfg.algorithm.kl_coef > 0
    if b.old_log_probs is None:  # on-policy, one step: old = this very forward pass
        old = lp.detach()
        isw = _record_mismatch(parts, old, rows(t.rollout_log_probs), measured, bag)
    else:
        old, isw = rows(b.old_log_probs), rows(b.is_weights)
    return policy_loss_terms(lp, entropy, old, rows(b.ref_log_probs),
                             rows(b.advantages), mask, cfg.algorithm, is_weights=isw,
                             kl_log_probs=torch.log_softmax(logits, -1) if full_kl else lp, entropy_mask=measured)


def _choose_update_rows(parts, b: IterationBatch, bag) -> None:
    """b.update_rows: the rows with a non-zero advantage, where leaving the others out
    is the same update (trainer.skip_zero_advantage); None: every row. The rollout's graph
    (fused update) covers every row: it is dropped when the chosen rows' own forward and
    backward passes cost fewer FLOPs than back-propagating through it."""
    b.update_rows = None
    if not skips_zero_advantage(parts.cfg):
        return
    t = b.tensors
    active = (b.advantages != 0).any(-1)  # [B]
    rows, width = t.input_ids.shape
    bag.add("perf/zero_advantage_rows", int((~active).sum()), reduce="sum")
    kept = b.rollout_logits
    if kept is not None and fused_backward_cheaper(int(active.sum()), rows, rows // parts.cfg.rollout.n,
                                                   width - t.response_len, width, kept.shape[1]):
        return
    b.rollout_logits = None
    b.update_rows = active


def node_update(parts, b: IterationBatch, bag):
    cfg, t = parts.cfg, b.tensors
    n = t.input_ids.shape[0]
    gen = torch.Generator().manual_seed(cfg.trainer.seed * 7919 + b.step)
    parts.rollout.release()  # rollout.sleep_during_update: the device memory goes to the update
    _choose_update_rows(parts, b, bag)
    bag.add("perf/fused_update", float(b.rollout_logits is not None))
    if b.rollout_logits is not None and cfg.trainer.micro_batch_size < n:
        raise RuntimeError(f"the rollout's graph covers {n} samples but trainer.micro_batch_size is "
                           f"{cfg.trainer.micro_batch_size}: set trainer.fused_update=off")

    def micro_loss(micro, share):
        inside = _computed_rows(b, micro)
        loss, metrics = _micro_loss(parts, b, micro, inside, bag)
        return loss * share, metrics, inside

    minibatches = [mb for _ in range(cfg.trainer.ppo_epochs) for mb in _minibatches(n, cfg.trainer.mini_batches, gen)]
    tokens = run_update(parts.actor, minibatches, micro_batching(cfg), micro_loss, t.response_mask, t.attention_mask,
                        share_mode(cfg.algorithm), bag)
    b.rollout_logits = None  # its graph is spent
    bag.add("perf/train_tokens", tokens, reduce="sum")


def node_sync(parts, b: IterationBatch, bag):
    sync_rollout(parts.actor, parts.rollout)
