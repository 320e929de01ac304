"""Cache folders of generated base models and warm starts: a change of anything that
changes their weights gets a new folder; RL, evaluation and storage settings share one."""
import hashlib
import os

import pytest

from siirl_core.compose import compose_config
from siirl_core.config import SiirlConfig
from siirl_core.model_cache import agent_base_dir, base_model_dir, cache_key, publish, staging_dir, warm_start_dir
from siirl_core.models import create_tiny_model


def _dirs(*overrides):
    cfg = compose_config(["storage.cache_dir=/cache", *overrides])
    return base_model_dir(cfg), warm_start_dir(cfg)


def test_cache_key_is_the_sha256_of_the_sorted_json():
    expected = hashlib.sha256(b'[{"a": 1, "b": [2, "x"]}, 3]').hexdigest()[:12]
    assert cache_key({"b": [2, "x"], "a": 1}, 3) == expected


def test_folders_name_the_model_and_live_in_the_cache_dir():
    base, warm = _dirs("model=tiny")
    assert os.path.dirname(base) == "/cache" and os.path.basename(base).startswith("base-llama-tiny-")
    assert os.path.dirname(warm) == "/cache" and os.path.basename(warm).startswith("sft-tiny-")
    assert _dirs("model=tiny") == (base, warm)  # stable across calls


@pytest.mark.parametrize("override, base_changes", [
    ("trainer.seed=7", True), ("model=tiny", True), ("task=countdown", True),
    ("sft.lr=1e-4", False), ("sft.target_accuracy=0.5", False), ("task.max_digits=3", False),
])
def test_what_changes_the_weights_changes_the_folder(override, base_changes):
    base, warm = _dirs()
    new_base, new_warm = _dirs(override)
    assert (new_base != base) == base_changes
    assert new_warm != warm


@pytest.mark.parametrize("override", ["trainer.lr=1e-3", "algorithm=ppo", "evaluate.n=16", "rollout=hf",
                                      "storage.retries=2", "trainer.steps=3"])
def test_rl_and_evaluation_settings_share_the_warm_start(override):
    assert _dirs(override) == _dirs()


def test_a_given_model_path_is_used_as_is():
    cfg = SiirlConfig()  # not validated: the folder need not exist for its name
    cfg.model.path = "/models/mine"
    assert base_model_dir(cfg) == "/models/mine"


def test_each_agent_policy_gets_its_own_initialisation():
    cfg = compose_config(["agents=referential", "storage.cache_dir=/cache", "trainer.seed=3"])
    speaker, seed0 = agent_base_dir(cfg, "ABCDabcd", "speaker", 0)
    listener, seed1 = agent_base_dir(cfg, "ABCDabcd", "listener", 1)
    assert (seed0, seed1) == (3, 4) and speaker != listener
    assert agent_base_dir(cfg, "ABCDabcd", "speaker", 0)[0] == speaker
    assert agent_base_dir(cfg, "ABCDEabcde", "speaker", 0)[0] != speaker  # another vocabulary
    wider = compose_config(["agents=referential", "storage.cache_dir=/cache", "trainer.seed=3",
                            "agents.policies.speaker.init_std=0.05"])
    assert agent_base_dir(wider, "ABCDabcd", "speaker", 0)[0] != speaker


@pytest.mark.parametrize("std", [0.02, 0.2])
def test_init_std_is_the_spread_of_the_initial_weights(tmp_path, std):
    from safetensors.torch import load_file

    create_tiny_model(str(tmp_path), "ABCDabcd", seed=0, init_std=std)
    weights = load_file(str(tmp_path / "model.safetensors"))
    up = weights["model.layers.0.mlp.up_proj.weight"]  # 384 x 128 draws from N(0, std)
    assert float(up.std()) == pytest.approx(std, rel=0.05)


def _entry(folder, marker: str) -> str:
    os.makedirs(folder)
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write(marker)
    return folder


def test_two_runs_publishing_the_same_entry_keep_the_first(tmp_path):
    out = str(tmp_path / "agent-base-tiny-abc")
    first = _entry(staging_dir(out), "first")
    second = _entry(out + ".tmp-other-run", "second")
    assert publish(first, out) == out
    assert publish(second, out) == out  # the other run finished second: no error
    with open(os.path.join(out, "config.json")) as f:
        assert f.read() == "first"
    assert sorted(os.listdir(tmp_path)) == ["agent-base-tiny-abc"]  # the second copy is gone


def test_publishing_over_a_folder_that_is_not_an_entry_is_an_error(tmp_path):
    out = tmp_path / "agent-base-tiny-abc"
    (out / "sub").mkdir(parents=True)  # not empty, and no config.json
    with pytest.raises(OSError):
        publish(_entry(staging_dir(str(out)), "mine"), str(out))
    assert (out / "sub").is_dir()
