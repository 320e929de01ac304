"""Bad configuration fails at composition time with a message naming the key."""
import os
import subprocess

import pytest
import yaml

from siirl_core.compose import compose_config
from siirl_core.config import ConfigError
from tests.conftest import ROOT, siirl_cli


def test_defaults_compose_to_grpo_vllm_zero2():
    cfg = compose_config([])
    assert (cfg.algorithm.adv_estimator, cfg.rollout.backend, cfg.trainer.zero_stage) == ("grpo", "vllm", 2)
    assert cfg.cluster.n_workers == 1 and cfg.cluster.threads_per_worker == 1


def test_group_and_value_overrides_apply():
    cfg = compose_config(["rollout=hf", "trainer.lr=1e-4", "algorithm=dr_grpo"])
    assert cfg.rollout.backend == "hf"
    assert cfg.trainer.lr == pytest.approx(1e-4)
    assert cfg.algorithm.adv_estimator == "dr_grpo"
    assert cfg.algorithm.loss_agg_mode == "seq-mean-token-sum"


@pytest.mark.parametrize("override, expected", [
    ("trainer.lrr=1", "trainer.lrr"),  # unknown key: named, with the known keys
    ("+trainer.foo=1", "known keys under trainer"),
    ("trainer.lr=abc", "trainer.lr"),  # wrong type
    ("rollout.backend=sglang", "expected one of ['hf', 'vllm']"),
    ("rollout=sglang", "Available options in 'rollout'"),
    ("algorithm.adv_estimator=nope", "algorithm.adv_estimator"),
    ("algorithm.loss_agg_mode=mean", "token-mean"),
    ("trainer.zero_stage=4", "trainer.zero_stage"),
    ("model.path=/does/not/exist", "model.path='/does/not/exist' is not an HF model directory"),
    ("rollout.n=1", "rollout.n must be >= 2"),
    ("rollout.top_p=1.5", "rollout.top_p"),
    ("trainer.resume=latest", "trainer.resume"),
    ("sft.target_accuracy=1.5", "sft.target_accuracy=1.5 is not allowed; expected 0 <= target <= 1"),
    ("sft.check_every=0", "sft.check_every"),
    ("task.eval_size=0", "task.eval_size=0 is not allowed; expected a number > 0"),
    ("trainer.grad_clip=-1", "trainer.grad_clip=-1.0 is not allowed; expected a number >= 0"),
    ("rollout.kv_cache_gib=0", "rollout.kv_cache_gib=0 is not allowed; expected a number > 0"),
])
def test_bad_overrides_name_the_key(override, expected):
    with pytest.raises(ConfigError) as err:
        compose_config([override])
    assert expected in str(err.value)


def test_cli_reports_config_error_before_loading_anything():
    proc = subprocess.run(siirl_cli() + ["train", "trainer.stepz=3"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "configuration error" in proc.stderr and "trainer.stepz" in proc.stderr
    # Nothing started: no Prefect server, no Dask cluster, no model.
    assert "Dask dashboard" not in proc.stderr + proc.stdout
    assert "Starting temporary server" not in proc.stderr + proc.stdout


def test_model_directory_without_a_tokenizer_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"has no tokenizer \(expected one of tokenizer.json, "):
        compose_config(["model=local", f"model.path={tmp_path}"])


def test_retry_budgets_back_off_exponentially():
    from siirl_core.storage import backoff_schedule
    from tasks.training import iteration_task, retry_delays

    cfg = compose_config([])
    assert (cfg.trainer.retries, cfg.storage.retries) == (3, 6)
    assert retry_delays(cfg) == [5.0, 10.0, 20.0]
    task = iteration_task(cfg)
    assert task.retries == 3 and task.retry_delay_seconds == [5.0, 10.0, 20.0]
    assert backoff_schedule(cfg.storage.retries, cfg.storage.retry_backoff_s) == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert backoff_schedule(10, 1.0)[-3:] == [60.0, 60.0, 60.0]  # capped at a minute
    assert iteration_task(compose_config(["trainer.retries=0"])).retries == 0
    with pytest.raises(ConfigError, match=r"trainer.retries=-1 is not allowed; expected a number >= 0"):
        compose_config(["trainer.retries=-1"])


def test_cli_names_a_run_folder_it_cannot_create():
    proc = subprocess.run(siirl_cli() + ["train", "storage.uri=/proc/siirl-run"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "configuration error: storage.uri='/proc/siirl-run': cannot create the run folder" in proc.stderr
    assert "Starting temporary server" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("command", ["train", "sft", "retrain", "evaluate"])
def test_every_command_has_help(command, tmp_path):
    proc = subprocess.run(siirl_cli() + [command, "--help"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith(f"usage: siirl {command} ")
    # Every group folder of conf/ with its options, the default marked; common keys with the
    # defaults a run gets (conf/trainer/default.yaml and the schema).
    assert "  model      llama-3.2-1b, local, medium, mini*," in out and "  rollout    hf, vllm*" in out
    assert "  trainer.steps                [100]" in out and "  rollout.n                    [8]" in out
    assert f"siirl {command} [overrides] --cfg job" in out
    assert os.listdir(tmp_path) == []  # nothing made, not even a run folder


def test_cfg_job_prints_the_resolved_config_without_running(tmp_path):
    proc = subprocess.run(siirl_cli() + ["train", "trainer.steps=7", "rollout=hf", "--cfg", "job"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout)
    assert printed["trainer"]["steps"] == 7 and printed["rollout"]["backend"] == "hf"
    assert printed["trainer"]["lr"] == compose_config([]).trainer.lr
    assert "Starting temporary server" not in proc.stdout + proc.stderr and os.listdir(tmp_path) == []


def test_derived_numbers_by_hand():
    cfg = compose_config(["trainer.prompts_per_step=64", "rollout.n=8", "cluster.n_workers=2",
                          "trainer.mini_batches=2", "trainer.micro_batch_size=32"])
    assert cfg.samples_per_rank() == 64 // 2 * 8 == 256
    assert cfg.samples_per_rank(world_size=4) == 128
    assert cfg.grad_accum() == 256 // 2 // 32 == 4  # micro-batches per mini-batch on one rank
    agents = compose_config(["agents=referential", "++agents.policies.speaker.lr=1e-4"])
    assert agents.policy_lr("speaker") == 1e-4 and agents.policy_lr("listener") == agents.trainer.lr


def test_each_policy_a_rank_trains_by_hand():
    """A single-agent run is the one-policy case: one id, trainer.lr, every mini-batch of
    every epoch an optimizer step."""
    cfg = compose_config(["trainer.steps=10", "trainer.ppo_epochs=2", "trainer.mini_batches=3", "trainer.lr=5e-4",
                          "trainer.prompts_per_step=12", "rollout.n=4", "trainer.micro_batch_size=4"])
    assert cfg.policy_ids() == ["policy"] and cfg.policy_lr("policy") == 5e-4
    assert cfg.policy_optimizer_steps("policy") == 10 * 2 * 3
    assert cfg.policy_grad_accum("policy", world_size=2) == 12 // 2 * 4 // 3 // 4 == 2
    # Two policies taking turns for 2 rounds: 2 turns each per episode; 16 starts x 8
    # episodes / 2 ranks x 2 turns = 128 rows, 16 micro-batches of 8; alternating: each
    # policy updates on every second of 9 steps, the first 5 of them.
    team = compose_config(["agents=rps_selfplay", "agents.graph=rounds", "agents.rounds=2",
                           "agents.schedule=alternating", "trainer.steps=9", "rollout.n=8",
                           "trainer.micro_batch_size=8", "++agents.policies.bob.lr=3e-4"])
    assert team.policy_ids() == ["alice", "bob"]
    assert (team.policy_lr("alice"), team.policy_lr("bob")) == (1e-3, 3e-4)
    assert team.agents.turns_per_episode("bob") == 2
    assert team.policy_grad_accum("bob", world_size=2) == 16
    assert team.policy_optimizer_steps("alice") == 5
    assert compose_config(["agents=rps_selfplay", "trainer.steps=9"]).policy_optimizer_steps("bob") == 9


def test_derived_settings_for_the_start_log_by_hand():
    cfg = compose_config(["trainer.prompts_per_step=12", "rollout.n=4", "cluster.n_workers=2",
                          "trainer.micro_batch_size=5", "trainer.mini_batches=2", "trainer.ppo_epochs=3",
                          "trainer.lr=3e-4"])
    # 12 prompts over 2 ranks = 6 each, x4 samples = 24 rows; a mini-batch of 12 rows in
    # micro-batches of 5 is 3 micro-batches; 3 epochs x 2 mini-batches = 6 optimizer steps.
    assert cfg.derived() == {"world_size": 2, "prompts_per_rank": 6, "samples_per_rank": 24,
                             "optimizer_steps_per_iteration": 6, "grad_accum": 3, "lr": 3e-4}
    agents = compose_config(["agents=referential", "++agents.policies.listener.lr=1e-3"])
    assert agents.derived()["policy_lr"] == {"speaker": 2e-4, "listener": 1e-3}


def test_validation_reads_data_files_and_imports_user_code_once(tmp_path):
    from siirl_core.data import build_task
    from tests.data_files import arithmetic_rows, write_jsonl

    marks = tmp_path / "imported.txt"
    reward = tmp_path / "my_reward.py"
    reward.write_text(f"open({str(marks)!r}, 'a').write('x')\n"
                      "def score(data_source, solution_str, ground_truth, extra_info):\n    return 0.0\n")
    data = write_jsonl(tmp_path / "train.jsonl", arithmetic_rows(40, "arith"))
    overrides = ["task=file", f"task.train_files=[{data}]", "task.eval_size=4", f"reward.function={reward}:score"]
    cfg = compose_config(overrides)
    compose_config(overrides)  # a second flow of the same run composes again
    assert marks.read_text() == "x"  # the user's file ran once in this process
    first = build_task(cfg.task)
    assert build_task(cfg.task) is first  # the validation's task, not a second read of the file
    os.utime(data, ns=(0, 0))  # the file changed since
    assert build_task(cfg.task) is not first
