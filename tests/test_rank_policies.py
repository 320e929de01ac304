"""A rank owns a map of policies and a workload: a single-agent run is the one-policy
case of the code multi-agent runs use."""
import os

import pytest

from siirl_core.compose import compose_config
from siirl_core.worker import model_dirs_by_policy
from siirl_core.workload import TaskWorkload


def test_model_directories_are_named_by_policy():
    assert model_dirs_by_policy(compose_config([]), "/models/warm") == {"policy": "/models/warm"}
    team = compose_config(["agents=rps_selfplay"])
    assert model_dirs_by_policy(team, {"bob": "/b", "alice": "/a"}) == {"alice": "/a", "bob": "/b"}
    with pytest.raises(ValueError, match=r"no model directory for policies \['bob'\]; got directories for \['alice'\]"):
        model_dirs_by_policy(team, {"alice": "/a"})
    with pytest.raises(ValueError, match=r"no model directory for policies \['alice', 'bob'\]"):
        model_dirs_by_policy(team, "/one/directory")


def test_a_single_agent_rank_holds_one_policy(rank_worker, tmp_path):
    assert list(rank_worker.policies) == ["policy"] and isinstance(rank_worker.work, TaskWorkload)
    policy = rank_worker.policies["policy"]
    parts = rank_worker.parts
    assert (parts.actor, parts.rollout, parts.tokenizer) == (policy.actor, policy.rollout, policy.tokenizer)
    assert rank_worker.trained == [policy]  # no critic without GAE
    out = rank_worker.export(str(tmp_path / "export"))
    assert os.path.isfile(os.path.join(out, "model.safetensors"))  # the one policy, at the folder's top
