import pytest
import torch

from siirl_core.algorithms import aggregate_loss, masked_mean, masked_sum

# 2x3 example with a ragged mask:
#   row 0: [1, 2, 3] mask [1, 1, 0] -> tokens 1, 2   (sum 3, mean 1.5)
#   row 1: [4, 5, 6] mask [1, 0, 0] -> token 4        (sum 4, mean 4)
LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_token_mean():
    # (1 + 2 + 4) / 3 masked tokens = 7/3.
    torch.testing.assert_close(aggregate_loss(LOSS, MASK, "token-mean"), torch.tensor(7 / 3))


def test_seq_mean_token_mean():
    # (1.5 + 4) / 2 sequences = 2.75.
    torch.testing.assert_close(aggregate_loss(LOSS, MASK, "seq-mean-token-mean"), torch.tensor(2.75))


def test_seq_mean_token_sum():
    # (3 + 4) / 2 sequences = 3.5.
    torch.testing.assert_close(aggregate_loss(LOSS, MASK, "seq-mean-token-sum"), torch.tensor(3.5))


@pytest.mark.parametrize(
    "mode, expected",
    [("token-mean", 7 / 3), ("seq-mean-token-mean", 2.75), ("seq-mean-token-sum", 3.5)],
)
def test_empty_sequence_is_excluded(mode, expected):
    # A third row with no masked tokens (and junk values) must change nothing:
    # it adds no tokens and is not counted as a sequence in the seq-mean modes.
    loss = torch.cat([LOSS, torch.tensor([[7.0, float("inf"), float("nan")]])])
    mask = torch.cat([MASK, torch.zeros(1, 3, dtype=MASK.dtype)])
    torch.testing.assert_close(aggregate_loss(loss, mask, mode), torch.tensor(expected))


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_all_masked_out_gives_zero_and_finite_grad(mode):
    loss = torch.randn(2, 3, requires_grad=True)
    out = aggregate_loss(loss, torch.zeros(2, 3), mode)
    assert out.shape == ()
    assert float(out.detach()) == 0.0
    out.backward()
    torch.testing.assert_close(loss.grad, torch.zeros(2, 3))


def test_masked_mean_and_sum_helpers():
    # Masked tokens 1, 2, 4 as above: sum 7, mean 7/3; padding with inf is ignored.
    x = LOSS.clone()
    x[0, 2] = float("inf")
    torch.testing.assert_close(masked_sum(x, MASK), torch.tensor(7.0))
    torch.testing.assert_close(masked_mean(x, MASK), torch.tensor(7 / 3))
    # Per-row: row sums [3, 4], row means [1.5, 4].
    torch.testing.assert_close(masked_mean(x, MASK, dim=-1), torch.tensor([1.5, 4.0]))
    # Empty mask -> 0, not NaN.
    torch.testing.assert_close(masked_mean(x, torch.zeros(2, 3)), torch.tensor(0.0))
    torch.testing.assert_close(
        masked_mean(x, torch.tensor([[1, 0, 0], [0, 0, 0]]), dim=-1), torch.tensor([1.0, 0.0])
    )


def _loop_aggregate(loss, mask, mode):
    # Reference: explicit Python loops over rows and tokens.
    rows = []
    all_tokens = []
    for b in range(loss.shape[0]):
        toks = [float(loss[b, t]) for t in range(loss.shape[1]) if mask[b, t]]
        all_tokens += toks
        if toks:
            rows.append(sum(toks) / len(toks) if mode == "seq-mean-token-mean" else sum(toks))
    if mode == "token-mean":
        return sum(all_tokens) / len(all_tokens)
    return sum(rows) / len(rows)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_matches_python_loop(mode):
    gen = torch.Generator().manual_seed(0)
    loss = torch.randn(6, 9, generator=gen)
    mask = torch.rand(6, 9, generator=gen) > 0.5
    mask[2] = False  # one empty row
    mask[0, 0] = True  # at least one token overall
    out = aggregate_loss(loss, mask, mode)
    assert float(out) == pytest.approx(_loop_aggregate(loss, mask, mode), rel=1e-5)


def test_aggregate_rejects_unknown_mode_and_bad_shapes():
    with pytest.raises(KeyError) as excinfo:
        aggregate_loss(LOSS, MASK, "token-sum")
    assert "loss aggregation mode" in excinfo.value.args[0]
    assert "seq-mean-token-mean, seq-mean-token-sum, token-mean" in excinfo.value.args[0]
    with pytest.raises(ValueError):
        aggregate_loss(LOSS, MASK[:, :2], "token-mean")


def test_overlong_penalty_by_hand():
    from siirl_core.algorithms.shaping import overlong_penalty

    # max 8, buffer 4: free up to 4 tokens, then -(L-4)/4 * 0.5 down to -0.5 at 8.
    got = overlong_penalty(torch.tensor([2, 4, 5, 6, 8]), max_length=8, buffer=4, factor=0.5)
    torch.testing.assert_close(got, torch.tensor([0.0, 0.0, -0.125, -0.25, -0.5]))
    with pytest.raises(ValueError, match="overlong buffer"):
        overlong_penalty(torch.tensor([1]), max_length=8, buffer=0, factor=1.0)


def test_clipped_value_loss_by_hand():
    from siirl_core.algorithms.value import clipped_value_loss

    # One sequence, 3 tokens (the last padded). clip 0.2:
    # t0: V=1.0, V_old=0.5 -> V_clip=0.7, R=1.0: max(0, 0.09)=0.09, clipped term active
    # t1: V=0.4, V_old=0.5 -> V_clip=0.4, R=0.0: max(0.16, 0.16)=0.16, not counted as clipped
    # token-mean of 0.5 * [0.09, 0.16] = 0.0625
    v = torch.tensor([[1.0, 0.4, 9.0]], requires_grad=True)
    loss, m = clipped_value_loss(v, torch.tensor([[0.5, 0.5, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]]),
                                 torch.tensor([[1.0, 1.0, 0.0]]), clip_range=0.2)
    assert loss.item() == pytest.approx(0.0625)
    assert m["vf_clipfrac"].item() == pytest.approx(0.5)
    loss.backward()
    # t0's clipped branch is flat in V: no gradient; t1: d/dV 0.5*(V-R)^2 / 2 tokens = 0.4/2.
    torch.testing.assert_close(v.grad, torch.tensor([[0.0, 0.2, 0.0]]))


def test_outcome_reward_sits_on_the_last_generated_token_even_with_gaps():
    from siirl_core.algorithms.shaping import outcome_token_rewards

    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0],   # one answer, right-padded
                         [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0],   # a turn, 2 tool tokens, a turn
                         [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])  # nothing generated
    got = outcome_token_rewards(torch.tensor([2.0, 3.0, 5.0]), mask)
    expected = torch.zeros(3, 7)
    expected[0, 2] = 2.0
    expected[1, 5] = 3.0  # not at mask.sum() - 1 = 3, a tool token
    assert torch.equal(got, expected)
