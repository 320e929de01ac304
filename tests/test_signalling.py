"""The signalling bonus: I(prompt; first token) by hand, its micro-batch surrogate's
gradient against autograd of the whole-batch value, and what it does to a speaker
whose team reward carries no signal."""
import math

import pytest
import torch

from siirl_core.agents.signalling import mutual_information, signalling_surrogate

NEG = -1e4  # a masked token's log-probability, as the sampler leaves it


def one_hot_logp(rows: list[int], vocab: int = 8) -> torch.Tensor:
    logp = torch.full((len(rows), vocab), NEG)
    for i, token in enumerate(rows):
        logp[i, token] = 0.0
    return logp


def test_mutual_information_by_hand():
    # Four prompts, one distinct token each: log 4. Two prompts pooled on one token:
    # H(marginal) = H(1/2, 1/4, 1/4) = 1.5 log 2, conditional entropy 0.
    assert float(mutual_information(one_hot_logp([0, 1, 2, 3]))) == pytest.approx(math.log(4), abs=1e-6)
    assert float(mutual_information(one_hot_logp([0, 0, 2, 3]))) == pytest.approx(1.5 * math.log(2), abs=1e-6)
    # Every prompt with the same distribution: the message says nothing.
    same = torch.log_softmax(torch.tensor([[0.3, -1.0, 2.0]]).repeat(5, 1), -1)
    assert float(mutual_information(same)) == pytest.approx(0.0, abs=1e-6)
    # Two prompts, uniform over two tokens each, disjoint: 1 bit, the plain formula.
    half = torch.log(torch.tensor([[0.5, 0.5, 1e-30, 1e-30], [1e-30, 1e-30, 0.5, 0.5]]))
    h_marginal = -4 * 0.25 * math.log(0.25)
    h_conditional = -2 * 0.5 * math.log(0.5)
    assert float(mutual_information(half)) == pytest.approx(h_marginal - h_conditional, abs=1e-6)


def test_surrogate_over_micro_batches_has_the_whole_batch_gradient():
    torch.manual_seed(0)
    x = torch.randn(10, 6, requires_grad=True)
    mutual_information(torch.log_softmax(x, -1)).backward()
    expected = x.grad.clone()
    x.grad = None
    logp = torch.log_softmax(x, -1)
    marginal = logp.exp().mean(0).detach()
    total = sum(signalling_surrogate(logp[rows], marginal).sum() for rows in (slice(0, 3), slice(3, 7), slice(7, 10)))
    (total / 10).backward()
    assert torch.allclose(x.grad, expected, atol=1e-6)
    assert expected.abs().max() > 1e-3  # the check compares gradients that are not all zero


# Two ranks with different numbers of turns: the pooled marginal is the mean over all rows.
ROWS = {0: 3, 1: 5}


def _rank(rank: int, port: int, out):
    import os

    import torch.distributed as dist

    from siirl_core.agents.signalling import pooled_statistics

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    logp = _all_rows()[:ROWS[0]] if rank == 0 else _all_rows()[ROWS[0]:]
    marginal, info, count = pooled_statistics(logp)
    out[rank] = (marginal.tolist(), info, count)
    dist.destroy_process_group()


def _all_rows() -> torch.Tensor:
    return torch.log_softmax(torch.randn(ROWS[0] + ROWS[1], 5, generator=torch.Generator().manual_seed(1)), -1)


def test_two_ranks_pool_the_marginal_over_all_turns():
    import torch.multiprocessing as mp

    from tests.conftest import _free_port

    out = mp.Manager().dict()
    mp.spawn(_rank, args=(_free_port(), out), nprocs=2, join=True)
    rows = _all_rows().exp()
    expected = [sum(float(rows[i, v]) for i in range(len(rows))) / len(rows) for v in range(5)]  # a plain loop
    for rank in (0, 1):
        marginal, info, count = out[rank]
        assert marginal == pytest.approx(expected, abs=1e-6) and count == 8
        assert info == pytest.approx(float(mutual_information(_all_rows())), abs=1e-6)
