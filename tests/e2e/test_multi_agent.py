"""Multi-agent runs as a user starts them (`siirl train agents=...`, Prefect + Dask):
the referential game learns to communicate with separate policies and resumes from
its checkpoint; solver and verifier raise their team accuracy."""
import json
import os

import pytest
from transformers import AutoModelForCausalLM

from tests.e2e.helpers import metrics_by_step, run_siirl, summary
from tests.e2e.learning_cases import CASES

pytestmark = pytest.mark.slow


def test_referential_game_learns_with_separate_policies_and_resumes(tmp_path, cache_dir):
    run_dir, case = str(tmp_path / "run"), CASES["referential"]
    common = case.command(run_dir, cache_dir)
    run_siirl(common + ["trainer.steps=40"])  # stops after its checkpoint at step 40
    run_siirl(common)  # the preset's steps: resumes at 41
    s = summary(run_dir)
    assert s["resumed_from_step"] == 40
    # Chance is 1/4; greedy success on 200 held-out episodes at the end.
    assert s["val_accuracy_before"] <= 0.35, s
    case.check(run_dir)
    m = metrics_by_step(run_dir)
    last = case.iterations
    assert sorted(m) == list(range(1, last + 1))
    assert {"agent/speaker/reward/mean", "agent/listener/reward/mean", "policy/speaker/actor/pg_loss",
            "policy/listener/actor/pg_loss"} <= set(m[last])
    step = os.path.join(run_dir, "checkpoints", f"step_{last:08d}")
    files = json.load(open(os.path.join(step, "manifest.json")))["files"]
    for pid in ("speaker", "listener"):
        assert any(f.startswith(f"policies/{pid}/engine/") for f in files)
        assert f"policies/{pid}/hf/model.safetensors" in files
        model = AutoModelForCausalLM.from_pretrained(os.path.join(s["final_policy"], pid))
        assert model.config.vocab_size > 8


def test_solver_and_verifier_raise_team_accuracy(tmp_path, cache_dir):
    run_dir, case = str(tmp_path / "run"), CASES["solver_verifier"]
    run_siirl(case.command(run_dir, cache_dir))
    # Team accuracy (the verifier's final answer) on 200 held-out problems.
    case.check(run_dir)
    last = metrics_by_step(run_dir)[case.iterations]
    assert "agent/solver/correct" in last and "policy/verifier/actor/pg_loss" in last
