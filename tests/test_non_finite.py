"""A NaN or infinite loss or gradient never reaches the weights: its optimizer step is
skipped on every rank, and more than trainer.max_skipped_steps skipped in a row stop the
run; non-finite weights are never written to a checkpoint or an export; the stop is not
retried. tests/test_algorithms_run.py drives the same through a rank's iterations."""
import math

import pytest
import torch

from siirl_core.training.actor import NonFiniteUpdate, check_finite_weights


# Per optimizer step (2 micro-batches per rank): which rank's second micro-batch loss is NaN.
NAN_ON = {1: 1, 2: None, 3: 0, 4: 1}


def _rank(rank: int, port: int, stage: int, out):
    import torch.nn as nn

    from siirl_core.distributed import init_process_group
    from siirl_core.training.actor import DeepSpeedActor

    init_process_group(rank, 2, "127.0.0.1", port)
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    actor = DeepSpeedActor(module, lr=0.05, weight_decay=0.0, warmup_steps=0, total_steps=10, schedule="constant",
                           zero_stage=stage, micro_batch_size=2, grad_accum=2, world_size=2, grad_clip=1.0,
                           max_skipped_steps=1)
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(rank))

    def weights() -> list[list[float]]:
        with actor.gathered():
            return [p.detach().flatten().tolist() for p in module.parameters()]

    seen = {0: weights()}
    try:
        for step, bad_rank in NAN_ON.items():
            for micro in range(2):
                loss = actor.engine(x[2 * micro:2 * micro + 2]).pow(2).mean()
                if micro == 1 and bad_rank == rank:
                    loss = loss * math.nan
                actor.accumulate(loss * 0.5)
            seen[step] = weights()
    except NonFiniteUpdate as err:
        seen["error"] = str(err)
    seen[len(NAN_ON)] = weights()
    seen["skipped"] = actor.skipped_steps
    out[(stage, rank)] = seen


@pytest.mark.parametrize("stage", [2, 3])
def test_a_non_finite_loss_on_one_rank_skips_the_step_on_every_rank(stage):
    """Two gloo ranks under DeepSpeed ZeRO: a NaN loss on either rank leaves every weight
    of both ranks as it was; the good step between trains; the second skip in a row
    (max_skipped_steps=1) stops both ranks with NonFiniteUpdate."""
    import torch.multiprocessing as mp

    from tests.conftest import _free_port

    out = mp.Manager().dict()
    mp.spawn(_rank, args=(_free_port(), stage, out), nprocs=2, join=True)
    for rank in (0, 1):
        seen = out[(stage, rank)]
        assert seen[1] == seen[0]  # rank 1's NaN: nothing moved, here or there
        assert seen[2] != seen[1] and all(math.isfinite(v) for p in seen[2] for v in p)
        assert seen[3] == seen[2]  # rank 0's NaN, skipped once more (1 allowed in a row)
        assert seen[4] == seen[2] and seen["skipped"] == 3
        assert "2 optimizer steps in a row had a NaN or infinite loss or gradient" in seen["error"]
        assert out[(stage, 0)][2] == out[(stage, 1)][2]  # the ranks agree on the weights


def test_non_finite_weights_are_never_written():
    check_finite_weights({"w": torch.ones(3), "step": torch.tensor(3)}, "x")
    with pytest.raises(NonFiniteUpdate, match=r"not writing the export: 1 tensors hold NaN or infinite values "
                                              r"\(first: b\)"):
        check_finite_weights({"a": torch.ones(2), "b": torch.tensor([1.0, math.nan])}, "the export")


def test_a_non_finite_update_is_not_retried():
    from prefect.states import Failed

    from infra.rank_group import RankFailure
    from tasks.training import worth_retrying

    failure = RankFailure("rank 0 failed in run_until: NonFiniteUpdate: the loss ...", cause=NonFiniteUpdate)
    assert not worth_retrying(None, None, Failed(data=failure))
