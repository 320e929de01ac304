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
    engine = rank_worker.actor.engine
    engine.save_checkpoint(str(tmp_path / "engine"), tag="state")
    files = sorted((tmp_path / "engine" / "state").glob("*.pt"))
    # One fp32 rank runs ZeRO stage 0: model, AdamW and scheduler state share one file
    # (multi-rank ZeRO files are loaded by the e2e resume tests).
    assert {f.name for f in files} == {"mp_rank_00_model_states.pt"}
    state = load_without_code(str(files[0]))
    assert state["optimizer"]["param_groups"][0]["fused"] and "lr_scheduler" in state  # AdamW's own state dict
    saved = {k: v.clone() for k, v in rank_worker.actor.named_weights()}
    with torch.no_grad():  # move every weight away from the saved values: a load that does nothing fails below
        for p in engine.module.parameters():
            p.add_(1.0)
    assert not any(torch.equal(saved[k], v) for k, v in rank_worker.actor.named_weights())
    engine.load_checkpoint(str(tmp_path / "engine"), tag="state", load_optimizer_states=True,
                           load_lr_scheduler_states=True)
    after = dict(rank_worker.actor.named_weights())
    assert sorted(after) == sorted(saved) and all(torch.equal(saved[k], after[k]) for k in saved)

    marker = tmp_path / "code-ran"
    torch.save({"module": _RunsCodeWhenLoaded(str(marker))}, str(files[0]))
    with pytest.raises(pickle.UnpicklingError, match="open"):
        engine.load_checkpoint(str(tmp_path / "engine"), tag="state")
    assert not marker.exists()


def test_restore_takes_the_configured_learning_rate(rank_worker):
    actor, lr = rank_worker.actor, rank_worker.cfg.trainer.lr
    try:
        actor.set_base_lr(0.5)
        assert actor.current_lr() == pytest.approx(0.5)
        assert actor.scheduler.base_lrs == [0.5]
    finally:
        actor.set_base_lr(lr)
    assert actor.current_lr() == pytest.approx(lr)
