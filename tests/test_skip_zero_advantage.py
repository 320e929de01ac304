"""trainer.skip_zero_advantage: rows whose advantages are all zero are left out of the
update's forward and backward passes, and the step is the same as with every row."""
import pytest
import torch

from siirl_core.compose import compose_config
from siirl_core.config import to_dict
from siirl_core.training.fused import fused_backward_cheaper, skips_zero_advantage
from siirl_core.worker import RankWorker
from tests.conftest import _free_port, watch_batches


def test_skipping_needs_a_one_step_update_without_kl_or_entropy_terms():
    assert skips_zero_advantage(compose_config([]))
    for off in (["trainer.skip_zero_advantage=false"], ["trainer.ppo_epochs=2"], ["trainer.mini_batches=2"],
                ["algorithm.kl_coef=0.01"], ["algorithm.entropy_coef=0.01"]):
        assert not skips_zero_advantage(compose_config(off)), off


def test_the_fused_graph_is_kept_only_while_its_backward_is_cheaper():
    # 16 prompts of 8 tokens, 128 samples, 6 steps: back-propagating through the rollout
    # (16*8 + 128*5 = 768 tokens, 4 FLOPs each) vs 6 FLOPs per token of 14-token rows.
    shape = dict(rows=128, prompts=16, prompt_width=8, seq_width=14, steps=6)
    assert not fused_backward_cheaper(active_rows=8, **shape)
    assert not fused_backward_cheaper(active_rows=36, **shape)  # 3024 < 3072: still a separate pass
    assert fused_backward_cheaper(active_rows=37, **shape)
    assert fused_backward_cheaper(active_rows=128, **shape)


def _worker(warm_model, skip: bool, fused: str):
    cfg = compose_config(["rollout=hf", "trainer.prompts_per_step=8", "trainer.micro_batch_size=64",
                          "trainer.lr=1e-3", f"trainer.fused_update={fused}",
                          f"trainer.skip_zero_advantage={str(skip).lower()}"])
    worker = RankWorker(to_dict(cfg), warm_model, rank=0, world_size=1, master_port=_free_port())
    worker.setup()
    rows = []  # batch rows of every forward pass through the whole model (the update's)
    worker.parts.actor.module.register_forward_pre_hook(lambda _m, _a, kw: rows.append(kw["input_ids"].shape[0]),
                                                  with_kwargs=True)
    return worker, rows


@pytest.mark.parametrize("fused", ["off", "auto"])
def test_leaving_zero_advantage_rows_out_takes_the_same_step(warm_model, rank_worker, fused):
    skip, skip_rows = _worker(warm_model, True, fused)
    every, every_rows = _worker(warm_model, False, fused)
    before = {n: p.detach().clone() for n, p in every.parts.actor.module.named_parameters()}
    skip_seen, every_seen = watch_batches(skip), watch_batches(every)
    m_skip, m_every = skip.run_until(1), every.run_until(1)
    assert skip_seen[-1].rollout.response_ids == every_seen[-1].rollout.response_ids
    active = int((skip_seen[-1].advantages != 0).any(-1).sum())
    assert 0 < active < 64  # this batch has groups that scored alike, and groups that did not
    assert m_skip["perf/zero_advantage_rows"] == 64 - active
    if fused == "off":
        assert every_rows == [64] and skip_rows == [active]
    else:  # the graph covers all 64 rows; dropped when `active` rows' own passes cost less
        t = skip_seen[-1].tensors
        width = t.input_ids.shape[1]
        keeps = fused_backward_cheaper(active, 64, 8, width - t.response_len, width, t.response_len)
        assert m_skip["perf/fused_update"] == float(keeps) and m_every["perf/fused_update"] == 1.0
        assert skip_rows == ([] if keeps else [active]) and every_rows == []
    for key in ("actor/pg_loss", "actor/grad_norm", "reward/mean", "actor/clipfrac", "actor/ratio_mean"):
        assert m_skip[key] == pytest.approx(m_every[key], rel=1e-4, abs=1e-6), key
    assert m_skip["perf/train_tokens"] < m_every["perf/train_tokens"] or fused == "auto"
    skip_w, every_w = dict(skip.parts.actor.module.named_parameters()), dict(every.parts.actor.module.named_parameters())
    step = max((every_w[n].detach() - before[n]).abs().max().item() for n in before)
    apart = max((skip_w[n].detach() - every_w[n].detach()).abs().max().item() for n in before)
    assert step > 5e-4 and apart < 0.05 * step  # see test_fused_update: Adam's first step amplifies rounding
    assert torch.isfinite(torch.tensor(m_skip["actor/entropy"])) and m_skip["actor/entropy"] > 0
