"""Multi-agent runs as a user starts them (`siirl train agents=...`, Prefect + Dask):
the referential game learns to communicate with separate policies and resumes from
its checkpoint; solver and verifier raise their team accuracy."""
import json
import os

import pytest
from transformers import AutoModelForCausalLM

from tests.e2e.helpers import metrics_by_step, run_siirl, summary

pytestmark = pytest.mark.slow


def test_referential_game_learns_with_separate_policies_and_resumes(tmp_path, cache_dir):
    run_dir = str(tmp_path / "run")
    common = ["train", "agents=referential", f"storage.uri={run_dir}", f"storage.cache_dir={cache_dir}"]
    run_siirl(common + ["trainer.steps=40"])  # stops after its checkpoint at step 40
    run_siirl(common)  # the preset's 120 steps: resumes at 41
    s = summary(run_dir)
    assert s["resumed_from_step"] == 40
    # Chance is 1/4; greedy success on 200 held-out episodes after 120 iterations.
    assert s["val_accuracy_before"] <= 0.35 and s["val_accuracy_after"] >= 0.8, s
    m = metrics_by_step(run_dir)
    assert sorted(m) == list(range(1, 121))
    assert {"agent/speaker/reward/mean", "agent/listener/reward/mean", "policy/speaker/actor/pg_loss",
            "policy/listener/actor/pg_loss"} <= set(m[120])
    step = os.path.join(run_dir, "checkpoints", "step_00000120")
    files = json.load(open(os.path.join(step, "manifest.json")))["files"]
    for pid in ("speaker", "listener"):
        assert any(f.startswith(f"policies/{pid}/engine/") for f in files)
        assert f"policies/{pid}/hf/model.safetensors" in files
        model = AutoModelForCausalLM.from_pretrained(os.path.join(s["final_policy"], pid))
        assert model.config.vocab_size > 8


def test_solver_and_verifier_raise_team_accuracy(tmp_path, cache_dir):
    run_dir = str(tmp_path / "run")
    run_siirl(["train", "agents=solver_verifier", f"storage.uri={run_dir}", f"storage.cache_dir={cache_dir}"])
    s = summary(run_dir)
    # Team accuracy (the verifier's final answer) on 200 held-out problems, 40 iterations.
    assert s["val_accuracy_after"] - s["val_accuracy_before"] >= 0.15, s
    last = metrics_by_step(run_dir)[40]
    assert "agent/solver/correct" in last and "policy/verifier/actor/pg_loss" in last
