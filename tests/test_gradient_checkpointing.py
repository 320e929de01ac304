"""trainer.gradient_checkpointing: the decoder layers are recomputed in the backward pass
and the gradients are those of the plain forward pass (to 1e-5 relative)."""
import copy

import pytest
import torch

from siirl_core.algorithms.entropy import logprobs_from_logits
from siirl_core.compose import compose_config
from siirl_core.config import ConfigError
from siirl_core.models import load_causal_lm
from siirl_core.training.actor import enable_gradient_checkpointing
from siirl_core.training.fused import fused_update_active
from siirl_core.training.logprobs import response_logits


def _batch(vocab: int, rows: int = 6, prompt: int = 5, response: int = 7):
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(4, vocab, (rows, prompt + response), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # a left-padded prompt
    mask[1, -3:] = 0  # a response that ended early
    advantages = torch.randn(rows, generator=gen)
    return ids, mask, advantages, response


def _loss(module, ids, mask, advantages, response) -> torch.Tensor:
    logits = response_logits(module, ids, mask, response)
    lp = logprobs_from_logits(logits, ids[:, -response:])
    keep = mask[:, -response:].float()
    return -((lp * advantages[:, None]) * keep).sum() / keep.sum()


def _runs_of_each_layer(module) -> list[int]:
    layers = module.model.layers
    counts = [0] * len(layers)
    for i, layer in enumerate(layers):
        layer.register_forward_pre_hook(lambda _m, _a, i=i: counts.__setitem__(i, counts[i] + 1))
    return counts


def test_the_same_gradients_with_each_layer_recomputed(warm_model):
    plain = load_causal_lm(warm_model)
    checkpointed = copy.deepcopy(plain)
    enable_gradient_checkpointing(checkpointed)
    batch = _batch(plain.config.vocab_size)
    runs = _runs_of_each_layer(checkpointed)
    _loss(plain, *batch).backward()
    _loss(checkpointed, *batch).backward()
    assert runs == [2] * len(runs)  # once forward, once more in the backward pass
    for (name, p), (_, q) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        scale = p.grad.abs().max().item()
        assert scale > 0, name
        assert (p.grad - q.grad).abs().max().item() <= 1e-5 * scale, name


def test_no_recomputation_and_no_dropout_outside_the_update(warm_model):
    module = load_causal_lm(warm_model)
    enable_gradient_checkpointing(module)
    runs = _runs_of_each_layer(module)
    ids, mask, _, response = _batch(module.config.vocab_size)
    with torch.no_grad():  # sampling and the old log-probs
        first = response_logits(module, ids, mask, response)
    again = response_logits(module, ids, mask, response)  # with autograd on, as in the update
    assert runs == [2] * len(runs)  # one forward each, nothing recomputed without a backward pass
    assert not module.training and not any(m.training for m in module.model.layers[0].modules()
                                           if m is not module.model.layers[0])
    assert torch.allclose(first, again.detach(), atol=1e-5)


def test_the_fused_update_gives_way_to_checkpointing():
    cfg = compose_config(["rollout=hf", "trainer.micro_batch_size=256", "trainer.gradient_checkpointing=true"])
    assert not fused_update_active(cfg)
    assert fused_update_active(compose_config(["rollout=hf", "trainer.micro_batch_size=256"]))
    with pytest.raises(ConfigError, match="trainer.gradient_checkpointing recomputes the activations"):
        compose_config(["rollout=hf", "trainer.micro_batch_size=256", "trainer.gradient_checkpointing=true",
                        "trainer.fused_update=on"])


def test_the_deepspeed_actor_checkpoints_when_configured(rank_worker, warm_model):
    from siirl_core.training.actor import DeepSpeedActor

    module = load_causal_lm(warm_model)
    runs = _runs_of_each_layer(module)
    actor = DeepSpeedActor(module, lr=1e-3, weight_decay=0.0, warmup_steps=0, total_steps=1, schedule="constant",
                           zero_stage=2, micro_batch_size=8, grad_accum=1, world_size=1, grad_clip=1.0,
                           gradient_checkpointing=True)
    actor.accumulate(_loss(actor.engine, *_batch(module.config.vocab_size)))
    assert runs == [2] * len(runs) and actor.grad_norm() > 0
