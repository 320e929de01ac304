"""The hf rollout's sampling loop (one prefill per prompt, shared by its samples) and the
fused update that back-propagates through it instead of a second forward pass."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from siirl_core.compose import compose_config
from siirl_core.config import ConfigError, to_dict
from siirl_core.models.loading import load_tokenizer
from siirl_core.batch import pad_rollout
from siirl_core.rollout.base import SamplingConfig
from siirl_core.rollout.decode import top_p_filter
from siirl_core.rollout.hf_engine import HFRollout
from siirl_core.training.fused import fused_update_active, fused_update_blockers
from siirl_core.training.logprobs import response_logits
from siirl_core.worker import RankWorker
from tests.conftest import _free_port, watch_batches


@pytest.fixture(scope="module")
def model_and_tok(tiny_model):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model), load_tokenizer(tiny_model)


def _engine(model, tok, batch_size=256):
    return HFRollout(model, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, batch_size=batch_size)


PROMPTS = ["1+2=", "34+56=", "7+89="]  # different lengths: left padding matters


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_kept_logits_and_gradients_equal_a_fresh_forward_pass(model_and_tok, temperature):
    model, tok = model_and_tok
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    sampling = SamplingConfig(n=4, temperature=temperature, max_new_tokens=6)
    engine = _engine(model, tok, batch_size=8)  # 2 prompts per forward pass: two chunks
    fused = engine.generate(prompts, sampling, seed=3, keep_graph=True)
    plain = engine.generate(prompts, sampling, seed=3)
    assert fused.response_ids == plain.response_ids and plain.train_logits is None
    assert fused.group_index == [0] * 4 + [1] * 4 + [2] * 4
    t = pad_rollout(fused, tok.pad_token_id)
    fresh = response_logits(model, t.input_ids, t.attention_mask, t.response_len, temperature)
    kept = fused.train_logits[:, :t.response_len]
    mask = t.response_mask[..., None]
    torch.testing.assert_close(kept * mask, fresh * mask, rtol=0, atol=1e-5)
    params = list(model.parameters())
    g_kept = torch.autograd.grad((kept * mask).square().sum(), params)
    g_fresh = torch.autograd.grad((fresh * mask).square().sum(), params)
    for a, b in zip(g_kept, g_fresh):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_greedy_matches_transformers_generate(model_and_tok):
    model, tok = model_and_tok
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    ours = _engine(model, tok).generate(prompts, SamplingConfig(n=1, greedy=True, max_new_tokens=5), seed=0)
    tok.padding_side = "left"
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    ref = model.generate(**enc, do_sample=False, max_new_tokens=5, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)[:, enc["input_ids"].shape[1]:]
    for got, want in zip(ours.response_ids, ref.tolist()):
        assert got == want[:len(got)]


def test_seeds_min_new_tokens_and_eos(model_and_tok):
    model, tok = model_and_tok
    prompts = [tok(p)["input_ids"] for p in PROMPTS] * 4
    engine = _engine(model, tok)
    free = SamplingConfig(n=8, max_new_tokens=6)
    a, b = engine.generate(prompts, free, seed=1), engine.generate(prompts, free, seed=1)
    assert a.response_ids == b.response_ids
    assert engine.generate(prompts, free, seed=2).response_ids != a.response_ids
    # An untrained model puts ~1/V on EOS: some of 96 samples end early, and end on EOS.
    ended = [r for r, f in zip(a.response_ids, a.finished) if f]
    assert ended and all(r[-1] == tok.eos_token_id and tok.eos_token_id not in r[:-1] for r in ended)
    fixed = engine.generate(prompts, SamplingConfig(n=8, max_new_tokens=6, min_new_tokens=6), seed=1)
    assert not any(fixed.finished) and {len(r) for r in fixed.response_ids} == {6}


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = {p: torch.isfinite(top_p_filter(logits, p))[0].tolist() for p in (0.5, 0.7, 0.81, 1.0)}
    assert kept == {0.5: [True, False, False, False], 0.7: [True, True, False, False],
                    0.81: [True, True, True, False], 1.0: [True] * 4}


def test_fused_update_needs_its_conditions():
    assert fused_update_active(compose_config(["rollout=hf", "trainer.prompts_per_step=8"]))
    assert not fused_update_active(compose_config(["rollout=hf"]))  # 32 x 8 samples > micro-batch of 64
    assert not fused_update_active(compose_config(["rollout=hf", "trainer.prompts_per_step=8",
                                                   "trainer.fused_update=off"]))
    blockers = fused_update_blockers(compose_config(["trainer.ppo_epochs=2"]))
    assert any("rollout.backend=vllm" in b for b in blockers) and any("ppo_epochs" in b for b in blockers)
    with pytest.raises(ConfigError, match=r"trainer.fused_update=on is not possible here: .*micro_batch_size=64 "
                                          r"is below the 256 samples per rank"):
        compose_config(["rollout=hf", "trainer.fused_update=on"])
    with pytest.raises(ConfigError, match="trainer.fused_update"):
        compose_config(["trainer.fused_update=sometimes"])


def _counting_worker(warm_model, mode):
    cfg = compose_config(["rollout=hf", "trainer.prompts_per_step=8", "trainer.micro_batch_size=64",
                          "trainer.lr=1e-3", f"trainer.fused_update={mode}", "algorithm.entropy_coef=0.01"])
    worker = RankWorker(to_dict(cfg), warm_model, rank=0, world_size=1, master_port=_free_port())
    worker.setup()
    calls = []
    worker.parts.actor.module.register_forward_pre_hook(lambda *_: calls.append(1))
    return worker, calls


def test_fused_update_takes_the_same_step_without_a_forward_pass(warm_model, rank_worker):
    fused, fused_calls = _counting_worker(warm_model, "on")
    plain, plain_calls = _counting_worker(warm_model, "off")
    before = {n: p.detach().clone() for n, p in plain.parts.actor.module.named_parameters()}
    fused_seen, plain_seen = watch_batches(fused), watch_batches(plain)
    m_fused, m_plain = fused.run_until(1), plain.run_until(1)
    # Same samples, one forward pass fewer (the update's), the same loss and step.
    assert fused_seen[-1].rollout.response_ids == plain_seen[-1].rollout.response_ids
    assert len(fused_calls) == len(plain_calls) - 1
    assert fused_seen[-1].rollout_logits is None  # the graph is released after the update
    for key in ("actor/pg_loss", "actor/entropy", "actor/grad_norm", "reward/mean"):
        assert m_fused[key] == pytest.approx(m_plain[key], rel=1e-4, abs=1e-6), key
    plain_w, fused_w = dict(plain.parts.actor.module.named_parameters()), dict(fused.parts.actor.module.named_parameters())
    step = max((plain_w[n].detach() - before[n]).abs().max().item() for n in before)
    apart = max((fused_w[n].detach() - plain_w[n].detach()).abs().max().item() for n in before)
    # Adam's first step is ~lr per weight whatever the gradient's size, so float rounding
    # in near-zero gradients shows up at a small fraction of a step, not below 1e-6.
    assert step > 5e-4 and apart < 0.05 * step


def test_one_fp32_rank_runs_zero_stage_0_and_reports_the_gradient_norm(rank_worker):
    from siirl_core.training.actor import DeepSpeedActor, effective_zero_stage

    assert [effective_zero_stage(s, 1, False) for s in (0, 1, 2, 3)] == [0, 0, 0, 3]
    assert effective_zero_stage(2, 2, False) == 2 and effective_zero_stage(2, 1, True) == 2
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 1, bias=False)
    actor = DeepSpeedActor(layer, lr=0.1, weight_decay=0.0, warmup_steps=0, total_steps=1, schedule="constant",
                           zero_stage=2, micro_batch_size=1, grad_accum=1, world_size=1, grad_clip=1.0)
    assert actor.zero_stage == 0
    x = torch.tensor([[3.0, 4.0, 0.0, 0.0]])  # d(loss)/dw = x: norm 5, clipped to 1
    before = layer.weight.detach().clone()
    actor.micro_step(actor.module(x).sum())
    assert actor.grad_norm() == pytest.approx(5.0)
    assert not torch.equal(layer.weight.detach(), before)
