"""A NaN or infinite loss, gradient or weight never reaches the optimizer, a checkpoint or
an export: the update is refused with an error that says so, and the run is not retried."""
import math

import pytest
import torch

from siirl_core.training.actor import NonFiniteUpdate, check_finite_loss, check_finite_weights


def test_a_non_finite_loss_is_refused_before_its_backward_pass():
    check_finite_loss(torch.tensor(0.5))
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(NonFiniteUpdate, match="the loss of a micro-batch is"):
            check_finite_loss(torch.tensor([0.1, bad]))


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
