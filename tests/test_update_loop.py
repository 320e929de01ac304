"""The one update loop (training/update_loop.py) and its micro-batches
(training/micro_batches.py) on real DeepSpeed actors: however a mini-batch is split
(one micro-batch, fixed rows, a token budget over rows grouped by length, padding
columns trimmed), every loss aggregation mode gives the weights plain AdamW gives on the
whole mini-batch's loss computed on the untrimmed batch; two ranks with different
lengths agree on their micro-batch count and step like one process on both ranks' rows."""
import copy

import pytest
import torch

from siirl_core.algorithms.aggregation import aggregate_loss
from siirl_core.algorithms.entropy import logprobs_from_logits
from siirl_core.metrics import MetricBag
from siirl_core.training.logprobs import position_ids_from_mask, response_logits, trim_padding
from siirl_core.training.micro_batches import MicroBatch, MicroBatching, by_token_budget, even_out, loss_shares
from siirl_core.training.update_loop import run_update

MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]


def _rows(prompts: list[int], responses: list[int], vocab: int, seed: int):
    """A batch in the training layout: prompts left-padded to P, responses right-padded to R."""
    g = torch.Generator().manual_seed(seed)
    p_len, r_len = max(prompts), max(responses)
    ids = torch.randint(1, vocab, (len(prompts), p_len + r_len), generator=g)
    mask = torch.zeros_like(ids)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        mask[i, p_len - p:p_len + r] = 1
    ids = ids * mask  # padding id 0
    response_mask = mask[:, p_len:].float()
    advantages = torch.randn(len(prompts), generator=g)[:, None] * response_mask
    return ids, mask, response_mask, advantages, r_len


def _full_loss(module, ids, mask, response_mask, advantages, r_len, mode):
    """The mini-batch's loss by hand: one forward pass over the untrimmed layout."""
    logits = module(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    lp = logprobs_from_logits(logits[:, -r_len - 1:-1].float(), ids[:, -r_len:])
    return aggregate_loss(-lp * advantages, response_mask, mode)


# Adam's first step is about lr x sign(gradient), blind to how gradients are weighted;
# with eps far above every gradient it is lr / eps x gradient: a step of exactly -gradient.
LR = EPS = 1e6


def _adamw(module):
    return torch.optim.AdamW(module.parameters(), lr=LR, eps=EPS, weight_decay=0.0)


def _actor(module, micro_rows: int, grad_accum: int, world_size: int = 1, stage: int = 0):
    from siirl_core.training.actor import DeepSpeedActor

    actor = DeepSpeedActor(module, lr=LR, weight_decay=0.0, warmup_steps=0, total_steps=10, schedule="constant",
                           zero_stage=stage, micro_batch_size=micro_rows, grad_accum=grad_accum,
                           world_size=world_size, grad_clip=0.0)
    for group in actor.optimizer.param_groups:
        group["eps"] = EPS
    return actor


def _update(actor, batch, batching, mode, bag=None):
    ids, mask, response_mask, advantages, r_len = batch

    def micro_loss(rows, share):
        logits = response_logits(actor.engine, ids[rows], mask[rows], r_len, packed=batching.packed)
        lp = logprobs_from_logits(logits, ids[rows][:, -r_len:])
        loss = aggregate_loss(-lp * advantages[rows], response_mask[rows], mode)
        return loss * share, {"actor/loss": loss.detach(), "actor/rows": float(len(rows))}, None

    return run_update(actor, [torch.arange(ids.shape[0])], batching, micro_loss, response_mask, mask, mode,
                      bag if bag is not None else MetricBag())


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from siirl_core.models import create_tiny_model, load_causal_lm

    return load_causal_lm(create_tiny_model(str(tmp_path_factory.mktemp("lm")), "0123456789+=", seed=0))


# Rows of different lengths: prompts 3-7 tokens, responses 1-9 (0 for one row: an empty answer).
PROMPTS = [7, 3, 5, 4, 6, 3, 7, 5]
RESPONSES = [9, 2, 5, 1, 8, 0, 3, 6]


@pytest.mark.parametrize("mode", MODES)
def test_any_split_steps_like_adamw_on_the_whole_minibatch(rank_worker, tiny_lm, mode):  # rank_worker: process group
    batch = _rows(PROMPTS, RESPONSES, tiny_lm.config.vocab_size, seed=1)
    reference = copy.deepcopy(tiny_lm)
    optimizer = _adamw(reference)
    _full_loss(reference, *batch, mode).backward()
    optimizer.step()
    want = dict(reference.named_parameters())

    splits = {"one micro-batch": (MicroBatching(8), 1), "3 rows": (MicroBatching(3), 3),
              "30-token budget": (MicroBatching(3, max_tokens=30), 3),
              "packed, 30 real tokens": (MicroBatching(3, max_tokens=30, packed=True), 3)}
    for name, (batching, grad_accum) in splits.items():
        module = copy.deepcopy(tiny_lm)
        _update(_actor(module, batching.rows, grad_accum), batch, batching, mode)
        for n, p in module.named_parameters():
            torch.testing.assert_close(p.detach(), want[n].detach(), rtol=1e-4, atol=1e-7,
                                       msg=lambda m: f"{name}: {n}: {m}")


def test_token_budget_groups_rows_by_length_and_counts_tokens(rank_worker, tiny_lm):
    lengths = torch.tensor([p + r for p, r in zip(PROMPTS, RESPONSES)])  # 16 5 10 5 14 3 10 11
    plan = by_token_budget(torch.arange(8), lengths, 30)
    # Longest first: 16 alone (2 x 16 > 30), 14 + 11 (2 x 14), 10 10 5 (3 x 10), 5 3.
    assert [m.tolist() for m in plan] == [[0], [4, 7], [2, 6, 1], [3, 5]]
    assert [m.rows.tolist() for m in even_out(plan, 6)] == [[0], [4], [7], [2, 6], [1], [3, 5]]
    # Packed, a run holds 30 real tokens: 16 + 14, 11 + 10 (+ 10 is 31), 10 + 5 + 5 + 3.
    packed = by_token_budget(torch.arange(8), lengths, 30, padded=False)
    assert [m.tolist() for m in packed] == [[0, 4], [7, 2], [6, 1, 3, 5]]
    padded = even_out([torch.tensor([0]), torch.tensor([1])], 3)
    assert [(m.rows.tolist(), m.filler) for m in padded] == [([0], False), ([1], False), ([1], True)]
    response_mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    micros = [MicroBatch(torch.tensor([0])), MicroBatch(torch.tensor([1, 2])), MicroBatch(torch.tensor([2]), True)]
    assert loss_shares("token-mean", response_mask, micros) == [2 / 3, 1 / 3, 0.0]
    assert loss_shares("seq-mean-token-sum", response_mask, micros) == [0.5, 0.5, 0.0]  # row 2 is empty

    batch = _rows(PROMPTS, RESPONSES, tiny_lm.config.vocab_size, seed=2)
    bag = MetricBag()
    tokens = _update(_actor(copy.deepcopy(tiny_lm), 3, 3), batch, MicroBatching(3, max_tokens=30), "token-mean", bag)
    assert tokens == int(lengths.sum())
    # Metrics weighted by response tokens: micro-batches of 1, 2, 3, 2 rows with 9, 14, 10, 1 tokens.
    assert bag.local()["actor/rows"] == pytest.approx((1 * 9 + 2 * 14 + 3 * 10 + 2 * 1) / 34)


def test_trimmed_and_packed_forwards_skip_padding_with_the_same_logits(tiny_lm):
    ids, mask, _, _, r_len = _rows([5, 3], [2, 1], tiny_lm.config.vocab_size, seed=3)
    wide = torch.cat([torch.zeros(2, 4, dtype=ids.dtype), ids, torch.zeros(2, 3, dtype=ids.dtype)], 1)
    wide_mask = torch.cat([torch.zeros(2, 4, dtype=mask.dtype), mask, torch.zeros(2, 3, dtype=mask.dtype)], 1)
    kept_ids, kept_mask, kept = trim_padding(wide, wide_mask, r_len + 3)
    assert kept == 2 and torch.equal(kept_ids, ids) and torch.equal(kept_mask, mask)
    with torch.no_grad():
        trimmed = response_logits(tiny_lm, wide, wide_mask, r_len + 3)
        full = tiny_lm(input_ids=wide, attention_mask=wide_mask,
                       position_ids=position_ids_from_mask(wide_mask)).logits[:, -r_len - 4:-1]
        packed = response_logits(tiny_lm, wide, wide_mask, r_len + 3, packed=True)
    assert trimmed.shape == full.shape == packed.shape
    assert torch.equal(trimmed[:, 2:], torch.zeros_like(trimmed[:, 2:]))
    real = wide_mask[:, -r_len - 3:].bool()
    assert torch.equal(packed[~real], torch.zeros_like(packed[~real]))
    torch.testing.assert_close(trimmed[real], full[real].float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed[real], full[real].float(), rtol=1e-5, atol=1e-5)


def _rank(rank: int, port: int, model_dir: str, out):
    from siirl_core.distributed import init_process_group
    from siirl_core.models import load_causal_lm

    init_process_group(rank, 2, "127.0.0.1", port)
    module = load_causal_lm(model_dir)
    half = slice(0, 4) if rank == 0 else slice(4, 8)
    batch = _rows(PROMPTS[half], RESPONSES[half], module.config.vocab_size, seed=10 + rank)
    actor = _actor(module, 2, 2, world_size=2, stage=2)
    # At 28 tokens rank 0's rows (16, 5, 10, 5 tokens) make 3 micro-batches and rank 1's
    # (14, 3, 10, 11) 2: rank 1 halves one to match.
    _update(actor, batch, MicroBatching(2, max_tokens=28), "token-mean")
    out[rank] = {n: p.detach().clone() for n, p in module.named_parameters()}


def test_two_ranks_with_different_lengths_step_like_one_process(tiny_lm, tmp_path):
    import torch.multiprocessing as mp

    from tests.conftest import _free_port

    model_dir = str(tmp_path / "m")
    tiny_lm.save_pretrained(model_dir)
    out = mp.Manager().dict()
    mp.spawn(_rank, args=(_free_port(), model_dir, out), nprocs=2, join=True)
    ids0, mask0, rm0, adv0, r0 = _rows(PROMPTS[:4], RESPONSES[:4], tiny_lm.config.vocab_size, seed=10)
    ids1, mask1, rm1, adv1, r1 = _rows(PROMPTS[4:], RESPONSES[4:], tiny_lm.config.vocab_size, seed=11)
    reference = copy.deepcopy(tiny_lm)
    optimizer = _adamw(reference)
    # token-mean over both ranks' rows: each rank's token sum over all 30 response tokens.
    total = rm0.sum() + rm1.sum()
    loss = sum(_full_loss(reference, ids, mask, rm, adv, r, "token-mean") * rm.sum() / total
               for ids, mask, rm, adv, r in ((ids0, mask0, rm0, adv0, r0), (ids1, mask1, rm1, adv1, r1)))
    loss.backward()
    optimizer.step()
    for n, p in reference.named_parameters():
        torch.testing.assert_close(out[0][n], p.detach(), rtol=1e-4, atol=1e-7, msg=lambda m: f"{n}: {m}")
        assert torch.equal(out[0][n], out[1][n])
