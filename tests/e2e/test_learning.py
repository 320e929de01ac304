"""Learning is checked by learning: the default configuration (warm start, then GRPO
with vLLM rollout and DeepSpeed ZeRO-2, through the Prefect flow on a Dask worker)
must raise held-out exact-match accuracy by the margin in tests/e2e/learning_cases.py
(measured over seeds in docs/learning.md)."""
import os
import subprocess
import sys
import textwrap

import pytest

from tests.e2e.helpers import metrics_by_step, run_siirl, summary
from tests.e2e.learning_cases import CASES

pytestmark = pytest.mark.slow


def test_default_training_raises_heldout_accuracy(tmp_path, cache_dir):
    run_dir = str(tmp_path / "run")
    proc = run_siirl(CASES["default"].command(run_dir, cache_dir))
    CASES["default"].check(run_dir)
    s = summary(run_dir)
    m = metrics_by_step(run_dir)
    assert sorted(m) == list(range(1, 101))
    for key in ("reward/mean", "reward/accuracy", "response/length_mean", "actor/entropy", "actor/clipfrac",
                "actor/grad_norm", "timing_s/rollout", "timing_s/update", "perf/tokens_per_s", "val/accuracy"):
        assert key in m[100], key
    assert "Dask dashboard" in proc.stderr + proc.stdout
    assert os.path.exists(os.path.join(run_dir, "checkpoints", "step_00000100", "manifest.json"))
    _exported_policy_loads_in_vllm(s["final_policy"], s["val_accuracy_after"])


def _exported_policy_loads_in_vllm(policy_dir: str, expected_accuracy: float):
    """A fresh vLLM engine (its own process) on the exported directory reproduces the
    flow's final greedy accuracy, so the export holds the trained weights."""
    script = textwrap.dedent(f"""
        import os
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from siirl_core.data import ArithmeticTask
        from siirl_core.evaluation import greedy_correct
        from siirl_core.models import load_causal_lm, load_tokenizer
        from siirl_core.rollout.vllm_engine import VLLMRollout
        tok = load_tokenizer({policy_dir!r})
        load_causal_lm({policy_dir!r})  # loads in transformers too
        task = ArithmeticTask()
        problems = task.eval_set()
        engine = VLLMRollout({policy_dir!r}, eos_id=tok.eos_token_id)
        acc = greedy_correct(engine, tok, task, problems, max_new_tokens=6) / len(problems)
        print("ACCURACY", acc)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    acc = float(proc.stdout.split("ACCURACY")[-1])
    assert acc == pytest.approx(expected_accuracy, abs=0.01)


def test_lora_learns(tmp_path, cache_dir):
    """LoRA adapters (rank 8) trained alone on the default task raise held-out accuracy by
    the case's margin; the export is the merged model with the adapters beside it."""
    run_dir = str(tmp_path / "run")
    run_siirl(CASES["lora"].command(run_dir, cache_dir))
    CASES["lora"].check(run_dir)
    assert os.path.isfile(os.path.join(summary(run_dir)["final_policy"], "adapter", "adapter_config.json"))


def test_bf16_learns(tmp_path, cache_dir):
    """trainer.precision=bf16 (bf16 autocast on this CPU rank, vLLM sampling in bf16)
    raises held-out accuracy by the case's margin."""
    run_dir = str(tmp_path / "run")
    proc = run_siirl(CASES["bf16"].command(run_dir, cache_dir))
    CASES["bf16"].check(run_dir)
    assert "fp32 weights, bf16 autocast" in proc.stderr + proc.stdout
    assert all(0 < m["rollout/logprob_abs_diff"] < 0.05 for m in metrics_by_step(run_dir).values())


def test_hf_backend_learns(tmp_path, cache_dir):
    """The transformers rollout backend, same flow, a shorter run and a smaller margin;
    the rank's 256 samples in one micro-batch, so the update back-propagates through the
    rollout's forward passes (trainer.fused_update=auto), except in a step where the rows
    with non-zero advantages are few enough that their own pass is cheaper
    (trainer.skip_zero_advantage)."""
    run_dir, case = str(tmp_path / "run"), CASES["hf"]
    run_siirl(case.command(run_dir, cache_dir))
    case.check(run_dir)
    steps = metrics_by_step(run_dir)
    assert sorted(steps) == list(range(1, case.iterations + 1))
    assert all(m["perf/fused_update"] == 1.0 or m["perf/zero_advantage_rows"] > 0 for m in steps.values())
    assert sum(m["perf/fused_update"] for m in steps.values()) >= case.iterations // 2
