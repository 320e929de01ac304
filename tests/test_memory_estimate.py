"""A model too large for the machine is refused at configuration time with an estimate of
what it needs (by hand below), before anything loads."""
import pytest

from siirl_core.compose import compose_config
from siirl_core.config import ConfigError
from siirl_core.memory_estimate import GIB, available_bytes, estimate, parameter_count, shortage


def test_the_estimate_by_hand():
    cfg = compose_config([])  # one rank, vLLM, no reference, GRPO
    parts = estimate(cfg, 10**9)
    assert parts == {"policy weights": 4e9, "gradients": 4e9, "Adam state": 8e9, "vLLM weights": 4e9,
                     "vLLM KV cache": 1 * GIB}
    two = estimate(compose_config(["cluster.n_workers=2", "trainer.prompts_per_step=32", "rollout=hf",
                                   "algorithm.kl_coef=0.1"]), 10**9)
    # ZeRO-2 over 2 ranks: each holds all weights, half the gradients and Adam state; a reference each.
    assert two == {"policy weights": 8e9, "gradients": 4e9, "Adam state": 8e9, "reference model": 8e9}
    lora = estimate(compose_config(["model.lora.rank=16", "rollout=hf"]), 10**9)
    assert lora == {"policy weights": 4e9, "gradients": 4e7, "Adam state": 8e7}


def test_the_refusal_says_what_is_needed_and_what_to_do(monkeypatch):
    monkeypatch.setenv("SIIRL_SKIP_MEMORY_CHECK", "1")  # composing must not depend on this machine
    cfg = compose_config(["model=qwen2.5-0.5b"])
    message = shortage(cfg, parameter_count(cfg), available=4 * GIB)
    assert message.startswith("model.size=qwen2.5-0.5b (0.49B parameters) needs at least 10.2 GiB on this machine "
                              "(policy weights 1.8, gradients 1.8, Adam state 3.7, vLLM weights 1.8, "
                              "vLLM KV cache 1.0 GiB, before activations) and 4.0 GiB are available")
    assert "model.lora.rank=16" in message and "rollout=hf" in message
    assert shortage(cfg, parameter_count(cfg), available=11 * GIB) is None


def test_a_3b_model_without_adapters_does_not_start_here(monkeypatch):
    monkeypatch.setenv("SIIRL_SKIP_MEMORY_CHECK", "1")
    adapters = compose_config(["model=qwen2.5-3b", "model.lora.rank=16", "rollout=hf"])
    needed = sum(estimate(adapters, parameter_count(adapters)).values())
    monkeypatch.delenv("SIIRL_SKIP_MEMORY_CHECK")
    full = 3.09e9 * (4 + 4 + 8 + 4) + GIB
    if available_bytes() is None or available_bytes() >= full:
        pytest.skip("this machine has the memory for full fine-tuning of the 3B shape")
    with pytest.raises(ConfigError, match=r"model.size=qwen2.5-3b \(3.09B parameters\) needs at least 58.5 GiB"):
        compose_config(["model=qwen2.5-3b"])
    assert needed < 13 * GIB  # with adapters and hf sampling: 3.09B x 4 bytes and small adapters
