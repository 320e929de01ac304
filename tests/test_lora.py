"""model.lora: only adapters train and are checkpointed; the rollout engine and the export
get W + (alpha / r) B A under the base model's names; a restore gives the adapters back
exactly."""
import os

import pytest
import torch

from siirl_core.compose import compose_config
from siirl_core.config import ConfigError, LoraSpec, to_dict
from siirl_core.models import load_causal_lm
from siirl_core.training.lora import apply_lora, merged_state
from tests.conftest import _free_port


def _lora_model(path: str, rank: int = 2, alpha: float = 6.0):
    module = apply_lora(load_causal_lm(path), LoraSpec(rank=rank, alpha=alpha, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # B starts at zero (no change); give it values so the merge shows
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return module


def test_merged_weights_by_hand(tiny_model):
    base = load_causal_lm(tiny_model).state_dict()
    module = _lora_model(tiny_model)
    merged = merged_state(module)
    assert set(merged) == set(base)
    q = module.base_model.model.model.layers[1].self_attn.q_proj
    a, b = q.lora_A["default"].weight, q.lora_B["default"].weight
    expected = base["model.layers.1.self_attn.q_proj.weight"] + (6.0 / 2) * (b @ a)
    assert torch.allclose(merged["model.layers.1.self_attn.q_proj.weight"], expected, atol=1e-6)
    assert torch.equal(merged["model.layers.1.self_attn.k_proj.weight"], base["model.layers.1.self_attn.k_proj.weight"])
    # A plain model with the merged weights computes what the adapted one does.
    plain = load_causal_lm(tiny_model)
    plain.load_state_dict(merged)
    ids = torch.randint(4, plain.config.vocab_size, (3, 9))
    assert torch.allclose(plain(input_ids=ids).logits, module(input_ids=ids).logits, atol=1e-5)


def _lora_worker(path: str):
    from siirl_core.worker import RankWorker

    cfg = compose_config(["rollout=hf", "model.lora.rank=4", "model.lora.alpha=8", "trainer.prompts_per_step=8",
                          "trainer.lr=1e-2", "algorithm.entropy_coef=0.01"])
    worker = RankWorker(to_dict(cfg), path, rank=0, world_size=1, master_port=_free_port())
    worker.setup()
    return worker


def test_only_adapters_train_and_a_restore_gives_them_back(warm_model, rank_worker, tmp_path):
    worker = _lora_worker(warm_model)
    adapters = {n for n, p in worker.parts.actor.module.named_parameters() if p.requires_grad}
    assert adapters and all(".lora_" in n for n in adapters)
    in_optimizer = sum(p.numel() for g in worker.parts.actor.optimizer.param_groups for p in g["params"])
    assert in_optimizer == sum(p.numel() for n, p in worker.parts.actor.module.named_parameters() if n in adapters)
    before = {k: v.clone() for k, v in worker.parts.actor.module.state_dict().items()}
    worker.run_until(2)
    after = worker.parts.actor.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if ".lora_" not in k)  # the base is frozen
    assert any(not torch.equal(before[k], after[k]) for k in before if ".lora_B" in k)

    folder = worker.save(str(tmp_path / "run"), {})
    engine_file = os.path.join(folder, "engine", "state", "mp_rank_00_model_states.pt")
    weights_file = os.path.join(folder, "policy", "model.safetensors")
    assert os.path.getsize(engine_file) < 0.25 * os.path.getsize(weights_file)  # adapters and their Adam state
    fresh = _lora_worker(warm_model)
    fresh.restore(folder, 2)
    restored = fresh.parts.actor.module.state_dict()
    assert all(torch.equal(after[k], restored[k]) for k in after)
    m_resumed, m_original = fresh.run_until(3), worker.run_until(3)
    for key in ("actor/pg_loss", "actor/grad_norm", "reward/mean", "actor/entropy"):
        assert m_resumed[key] == m_original[key], key

    exported = worker.export(str(tmp_path / "export"))
    assert os.path.isfile(os.path.join(exported, "adapter", "adapter_config.json"))
    plain = load_causal_lm(exported)
    assert not any("lora" in k for k in plain.state_dict())
    ids = torch.randint(4, plain.config.vocab_size, (2, 7))
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, worker.parts.actor.module(input_ids=ids).logits, atol=1e-5)


@pytest.mark.parametrize("override, message", [
    ("model.lora.dropout=1", "model.lora.dropout=1.0: expected a probability in [0, 1)"),
    ("model.lora.target_modules=[]", "model.lora.target_modules is empty"),
    ("model.lora.rank=-1", "model.lora.rank=-1 is not allowed"),
])
def test_bad_lora_settings_name_the_key(override, message):
    overrides = [override] if "rank" in override else ["model.lora.rank=8", override]
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)").replace("(", r"\(")):
        compose_config(overrides)


@pytest.fixture(scope="session")
def adapters_worker(warm_model):
    """Kept for the whole session: an in-process vLLM engine that shuts down tears down
    torch.distributed's default group, under the engines of later tests."""
    from siirl_core.worker import RankWorker

    cfg = compose_config(["model.lora.rank=4", "model.lora.alpha=8", "rollout.lora_sync=adapters",
                          "trainer.prompts_per_step=8", "trainer.lr=1e-2", "algorithm.entropy_coef=0.01"])
    worker = RankWorker(to_dict(cfg), warm_model, rank=0, world_size=1, master_port=_free_port())
    worker.setup()
    return worker


def test_vllm_samples_through_the_adapters_it_is_handed(adapters_worker):
    """rollout.lora_sync=adapters: after each update vLLM gets only the adapter files and
    samples from the base plus those adapters, the model the trainer scores with."""
    worker = adapters_worker
    rollout = worker.parts.rollout
    assert rollout.takes_adapters and rollout.lora_request is None  # fresh adapters: B = 0, the base model
    worker.run_until(1)
    first = rollout.lora_request.lora_path
    assert os.path.isfile(os.path.join(first, "adapter_model.safetensors"))
    m2 = worker.run_until(2)  # sampled through the adapters trained at step 1
    assert rollout.lora_request.lora_int_id == 2 and not os.path.exists(first)  # the older files are gone
    assert m2["rollout/logprob_abs_diff"] < 2e-5, m2["rollout/logprob_abs_diff"]
    # Control: the same engine without the adapters samples from the base weights, which
    # the trained adapters have moved away from: the metric above would have shown it.
    rollout.lora_request = None
    m3 = worker.run_until(3)
    assert m3["rollout/logprob_abs_diff"] > 10 * max(m2["rollout/logprob_abs_diff"], 1e-7)


def test_adapters_for_vllm_need_lora_and_vllm():
    with pytest.raises(ConfigError, match=r"rollout.lora_sync=adapters .* model.lora.rank > 0 \(got 0\)"):
        compose_config(["rollout.lora_sync=adapters"])
    with pytest.raises(ConfigError, match=r"rollout.backend=vllm \(got hf\)"):
        compose_config(["rollout=hf", "model.lora.rank=8", "rollout.lora_sync=adapters"])
    with pytest.raises(ConfigError, match=r"multi-agent policies sample with the hf engine"):
        compose_config(["agents=rps_selfplay", "model.lora.rank=8", "rollout.lora_sync=adapters"])
