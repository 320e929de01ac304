"""DeepSpeed's engine files load through PyTorch's restricted unpickler: real ZeRO state
loads, a file carrying code is refused before the code runs. A restored checkpoint
takes the configured learning rate."""
import pickle

import pytest
import torch

from siirl_core.training.safe_load import load_without_code


class _RunsCodeWhenLoaded:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):  # unpickling calls open(marker, "w"): creates the file
        return (open, (self.marker, "w"))


def test_engine_state_loads_without_pickled_code(rank_worker, tmp_path):
    engine = rank_worker.parts.actor.engine
    engine.save_checkpoint(str(tmp_path / "engine"), tag="state")
    files = sorted((tmp_path / "engine" / "state").glob("*.pt"))
    # One fp32 rank runs ZeRO stage 0: model, AdamW and scheduler state share one file
    # (multi-rank ZeRO files are loaded by the e2e resume tests).
    assert {f.name for f in files} == {"mp_rank_00_model_states.pt"}
    state = load_without_code(str(files[0]))
    assert state["optimizer"]["param_groups"][0]["fused"] and "lr_scheduler" in state  # AdamW's own state dict
    saved = {k: v.clone() for k, v in rank_worker.parts.actor.named_weights()}
    with torch.no_grad():  # move every weight away from the saved values: a load that does nothing fails below
        for p in engine.module.parameters():
            p.add_(1.0)
    assert not any(torch.equal(saved[k], v) for k, v in rank_worker.parts.actor.named_weights())
    engine.load_checkpoint(str(tmp_path / "engine"), tag="state", load_optimizer_states=True,
                           load_lr_scheduler_states=True)
    after = dict(rank_worker.parts.actor.named_weights())
    assert sorted(after) == sorted(saved) and all(torch.equal(saved[k], after[k]) for k in saved)

    marker = tmp_path / "code-ran"
    torch.save({"module": _RunsCodeWhenLoaded(str(marker))}, str(files[0]))
    with pytest.raises(pickle.UnpicklingError, match="open"):
        engine.load_checkpoint(str(tmp_path / "engine"), tag="state")
    assert not marker.exists()


def test_restore_takes_the_configured_learning_rate(rank_worker):
    actor, lr = rank_worker.parts.actor, rank_worker.cfg.trainer.lr
    try:
        actor.set_base_lr(0.5)
        assert actor.current_lr() == pytest.approx(0.5)
        assert actor.scheduler.base_lrs == [0.5]
    finally:
        actor.set_base_lr(lr)
    assert actor.current_lr() == pytest.approx(lr)


def test_a_fresh_engine_restores_weights_optimizer_moments_and_schedule(rank_worker, warm_model, tmp_path):
    """What a resume does in a new process: an engine built anew (its weights moved away
    from the saved ones) loads the saved engine files, and its weights, AdamW moments and
    schedule equal those of the engine that saved them."""
    from siirl_core.models import load_causal_lm
    from siirl_core.training.actor import DeepSpeedActor

    def build() -> DeepSpeedActor:  # rank_worker (first) owns the process group
        return DeepSpeedActor(load_causal_lm(warm_model), lr=1e-3, weight_decay=0.0, warmup_steps=2, total_steps=10,
                              schedule="linear", zero_stage=2, micro_batch_size=4, grad_accum=1, world_size=1,
                              grad_clip=1.0)

    saver = build()
    vocab = saver.module.config.vocab_size
    tokens = torch.randint(0, vocab, (4, 12), generator=torch.Generator().manual_seed(0))
    for _ in range(2):  # two real steps: AdamW has moments and the schedule has moved
        saver.accumulate(saver.engine(input_ids=tokens).logits.float().pow(2).mean())
    saver.engine.save_checkpoint(str(tmp_path / "engine"), tag="state")

    fresh = build()
    with torch.no_grad():
        for p in fresh.module.parameters():
            p.add_(1.0)
    fresh.engine.load_checkpoint(str(tmp_path / "engine"), tag="state", load_optimizer_states=True,
                                 load_lr_scheduler_states=True)
    expected = dict(saver.named_weights())
    assert all(torch.equal(expected[k], v) for k, v in fresh.named_weights())
    saved_state, loaded_state = saver.optimizer.state_dict()["state"], fresh.optimizer.state_dict()["state"]
    assert sorted(loaded_state) == sorted(saved_state) and saved_state
    for i, moments in saved_state.items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(loaded_state[i][name], moments[name]), (i, name)
    assert fresh.current_lr() == pytest.approx(saver.current_lr()) and fresh.scheduler.last_epoch == 2
