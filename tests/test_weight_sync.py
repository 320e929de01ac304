"""After a real DeepSpeed update, the live vLLM engine generates exactly what
transformers generates from the updated weights."""
import copy

from siirl_core.batch import IterationBatch
from siirl_core.data import ArithmeticTask
from siirl_core.models import load_causal_lm
from siirl_core.rollout.base import SamplingConfig
from siirl_core.rollout.hf_engine import HFRollout


def _greedy(engine, prompts):
    return engine.generate(prompts, SamplingConfig(n=1, greedy=True, max_new_tokens=6), seed=0).response_ids


def test_vllm_matches_transformers_after_update(rank_worker, warm_model, tmp_path):
    w = rank_worker
    before = {k: v.clone() for k, v in w.parts.actor.named_weights()}
    w.run_until(w.step + 1)  # rollout, GRPO update (lr 1e-3), sync
    after = dict(w.parts.actor.named_weights())
    changed = max((after[k] - before[k]).abs().max().item() for k in before)
    assert changed > 1e-4, "the update did not change the weights"

    tok = w.parts.tokenizer
    prompts = [tok(p.prompt)["input_ids"] for p in ArithmeticTask().eval_set()[:64]]
    updated = copy.deepcopy(w.parts.actor.module).eval()
    hf = HFRollout(updated, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id)
    vllm_out = _greedy(w.parts.rollout, prompts)
    assert vllm_out == _greedy(hf, prompts)
    exported = w.export(str(tmp_path / "policy"))
    reloaded = HFRollout(load_causal_lm(exported).eval(), pad_id=tok.pad_token_id, eos_id=tok.eos_token_id)
    assert _greedy(reloaded, prompts) == vllm_out


def test_rollout_logprobs_match_trainer(rank_worker):
    """vLLM's log-probs of its own samples agree with the trainer's recomputation."""
    from siirl_core.metrics import MetricBag
    from siirl_core.pipeline import node_rollout
    from siirl_core.update_nodes import _record_mismatch
    from siirl_core.training.logprobs import compute_logprobs
    from siirl_core.training.micro_batches import MicroBatching

    bag = MetricBag()
    batch = IterationBatch(step=rank_worker.step + 1)
    node_rollout(rank_worker.parts, batch, bag)
    t = batch.tensors
    trainer_lp = compute_logprobs(rank_worker.parts.actor.module, t.input_ids, t.attention_mask, t.response_len,
                                  MicroBatching(64))
    weights = _record_mismatch(rank_worker.parts, trainer_lp, t.rollout_log_probs, t.response_mask, bag)
    assert bag.local()["rollout/logprob_abs_diff"] < 1e-3
    # Truncated IS weights (on by default for vLLM) are ~1 where the two agree.
    assert abs(bag.local()["rollout/is_weight_mean"] - 1) < 1e-3 and weights.shape == trainer_lp.shape
    # Real log-probs, not zeros: the sampled tokens are not all certain.
    rollout_lp = batch.tensors.rollout_log_probs
    assert rollout_lp.min() < -0.01
    assert batch.tensors.response_mask.sum() > 0


def test_vllm_and_transformers_restrict_sampling_alike(rank_worker):
    """rollout.SamplingConfig.allowed_token_ids (an agent's action vocabulary) in both
    backends: vLLM samples only those tokens, and its greedy choice among them is the
    transformers engine's."""
    w = rank_worker
    tok = w.parts.tokenizer
    allowed = tuple(tok.convert_tokens_to_ids(c) for c in "13579")
    prompts = [tok(p.prompt)["input_ids"] for p in ArithmeticTask().eval_set()[:32]]
    sampled = w.parts.rollout.generate(prompts, SamplingConfig(n=4, max_new_tokens=4, allowed_token_ids=allowed), seed=1)
    tokens = {t for r in sampled.response_ids for t in r}
    assert tokens <= set(allowed) and len(tokens) > 1
    greedy = SamplingConfig(n=1, greedy=True, max_new_tokens=4, allowed_token_ids=allowed)
    hf = HFRollout(copy.deepcopy(w.parts.actor.module).eval(), pad_id=tok.pad_token_id, eos_id=tok.eos_token_id)
    assert w.parts.rollout.generate(prompts, greedy, seed=0).response_ids == hf.generate(prompts, greedy, seed=0).response_ids
