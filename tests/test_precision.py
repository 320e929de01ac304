"""trainer.precision=bf16 on a CPU rank: fp32 weights and optimizer state, the passes
(sampling, log-probs, update) in bf16 under autocast."""
import pytest
import torch

from siirl_core.compose import compose_config
from siirl_core.config import ConfigError, to_dict
from siirl_core.training.logprobs import compute_logprobs
from siirl_core.training.micro_batches import MicroBatching
from tests.conftest import _free_port, watch_batches


def test_an_unknown_precision_names_the_key():
    with pytest.raises(ConfigError, match=r"trainer.precision.*fp16.*"):
        compose_config(["trainer.precision=fp16"])


@pytest.fixture(scope="module")
def bf16_worker(warm_model):
    from siirl_core.worker import RankWorker

    cfg = compose_config(["trainer.precision=bf16", "rollout=hf", "trainer.prompts_per_step=8", "trainer.lr=1e-3",
                          "task.eval_size=16"])
    worker = RankWorker(to_dict(cfg), warm_model, rank=0, world_size=1, master_port=_free_port())
    info = worker.setup()
    return worker, info


def test_a_bf16_cpu_rank_computes_in_bf16_and_keeps_fp32_weights(bf16_worker):
    worker, info = bf16_worker
    assert info["bf16_autocast"] and not info["bf16"]  # DeepSpeed itself stays fp32 on the CPU
    module = worker.parts.actor.module
    first_linear = next(m for m in module.modules() if isinstance(m, torch.nn.Linear))
    # The output dtype of every call of one projection as a module (the update's pass; the
    # grouped sampler calls the weights directly, and its bf16 shows in the log-probs below).
    seen = []
    first_linear.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    batches = watch_batches(worker)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    worker.run_until(1)
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in module.parameters())
    assert any(not torch.equal(before[n], p) for n, p in module.named_parameters())  # and it trained
    # The sampled log-probs against an fp32 recomputation of the same tokens (outside
    # autocast, with the weights the samples were drawn from): bf16's rounding, no more.
    t = batches[-1].tensors
    module.load_state_dict(before)
    with torch.no_grad():
        fp32 = compute_logprobs(module, t.input_ids, t.attention_mask, t.response_len, MicroBatching(64))
    diff = ((fp32 - t.rollout_log_probs).abs() * t.response_mask).sum() / t.response_mask.sum()
    assert 1e-4 < float(diff) < 0.05, float(diff)


def test_evaluation_runs_under_the_same_precision(bf16_worker):
    worker, _ = bf16_worker
    module = worker.parts.actor.module
    dtypes = []
    handle = module.lm_head.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    try:
        m = worker.evaluate()
    finally:
        handle.remove()
    assert 0.0 <= m["val/accuracy"] <= 1.0 and set(dtypes) == {torch.bfloat16}
