"""The warm start stops at its target accuracy, measured on demonstrations it never trained on."""
from siirl_core.data import ArithmeticTask
from siirl_core.evaluation import greedy_correct
from siirl_core.models import load_causal_lm, load_tokenizer
from siirl_core.rollout.hf_engine import HFRollout
from siirl_core.sft import train_sft


def _probe_accuracy(model_dir: str, problems) -> float:
    tok = load_tokenizer(model_dir)
    engine = HFRollout(load_causal_lm(model_dir).eval(), pad_id=tok.pad_token_id, eos_id=tok.eos_token_id)
    return greedy_correct(engine, tok, ArithmeticTask(), problems, 6) / len(problems)


def test_warm_start_stops_once_the_target_is_reached(tiny_model, tmp_path):
    steps, checks, trained = 400, [], []
    out = train_sft(tiny_model, str(tmp_path / "sft"), ArithmeticTask(), steps=steps, batch_size=64, lr=2e-3, seed=0,
                    on_step=lambda s, loss: trained.append(s), target_accuracy=0.05, check_every=25,
                    on_check=lambda s, acc: checks.append((s, acc)))
    # Checked every 25 steps; stopped at the first check at or above the target.
    assert [s for s, _ in checks] == list(range(25, 25 * len(checks) + 1, 25))
    assert all(acc < 0.05 for _, acc in checks[:-1]) and checks[-1][1] >= 0.05, checks
    assert trained[-1] == checks[-1][0] < steps
    # The saved model scores what the last check measured, on the held-back batch (the one
    # after the last step, which training never drew).
    probe = ArithmeticTask().demonstrations(0, steps, 200)
    assert _probe_accuracy(out, probe) == checks[-1][1]


def test_warm_start_without_target_trains_every_step(tiny_model, tmp_path):
    trained, checks = [], []
    train_sft(tiny_model, str(tmp_path / "sft"), ArithmeticTask(), steps=30, batch_size=16, lr=2e-3, seed=0,
              on_step=lambda s, loss: trained.append(s), on_check=lambda s, acc: checks.append(s))
    assert trained == list(range(1, 31)) and checks == []


def test_the_sft_flow_records_how_the_warm_start_went(tmp_path):
    """`siirl sft` keeps warm_start.json beside the model (a training run's summary reports
    it): the steps run, the target that stopped them, the held-out accuracy; the same
    numbers as its log."""
    import json
    import re
    import subprocess

    from tests.conftest import ROOT, siirl_cli

    cache = tmp_path / "cache"
    proc = subprocess.run(siirl_cli() + ["sft", "model=tiny", "sft.steps=400", "sft.target_accuracy=0.02",
                                         "sft.check_every=10", f"storage.cache_dir={cache}", "task.eval_size=50"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    stopped = re.search(r"sft step (\d+): greedy accuracy ([\d.]+) on held-back demonstrations reaches", log)
    written = re.search(r"warm start written to (\S+): greedy accuracy ([\d.]+) on 50 held-out prompts", log)
    assert stopped and written, log[-3000:]
    with open(f"{written.group(1)}/warm_start.json") as f:
        record = json.load(f)
    assert record["steps"] == int(stopped.group(1)) < 400 and record["max_steps"] == 400
    assert record["stopped_at_target"] and record["target_accuracy"] == 0.02
    assert f"{record['held_back_accuracy']:.3f}" == stopped.group(2)
    assert f"{record['held_out_accuracy']:.3f}" == written.group(2)
