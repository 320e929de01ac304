"""Cache folders of generated base models and warm starts: a change of anything that
changes their weights gets a new folder; RL, evaluation and storage settings share one."""
import hashlib
import os

import pytest

from siirl_core.compose import compose_config
from siirl_core.config import SiirlConfig
from siirl_core.model_cache import agent_base_dir, base_model_dir, cache_key, warm_start_dir


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
