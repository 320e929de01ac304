"""Typed schema behind the Hydra YAML in conf/.

Each default lives here or in the YAML, not both: the YAML files only set what a
config group changes. `build_config` turns a composed OmegaConf tree into these
dataclasses (unknown keys and wrong types fail there); `compose_config` then checks the
cross-field rules (siirl_core/config_checks.py), naming the field and the allowed values.
This module imports nothing of the engine.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key and what is allowed."""


@dataclass
class LoraSpec:
    # Adapter rank; 0: train every weight (no adapters).
    rank: int = 0
    alpha: float = 16.0
    # Linear layers that get adapters (the names of Llama and Qwen2 projections).
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                "up_proj", "down_proj"])
    dropout: float = 0.0


@dataclass
class ModelConfig:
    # Path of an HF-format model directory; empty means "make one with the tiny factory".
    path: str = ""
    # A toy size (tiny, mini, small, medium: character tokenizer, `architecture`) or a
    # real family's shape (smollm2-135m, qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-3b,
    # llama-3.2-1b: its own architecture, a BPE tokenizer trained on the task's text).
    size: str = "tiny"
    architecture: str = "llama"
    # Real shapes: the most tokens the task-trained BPE tokenizer may have.
    bpe_vocab_size: int = 1024
    # LoRA adapters (peft) instead of full fine-tuning; see siirl_core/training/lora.py.
    lora: LoraSpec = field(default_factory=LoraSpec)
    # Supervised warm start run before RL when the model has none yet.
    warm_start: bool = True


@dataclass
class TaskConfig:
    name: str = "arithmetic"
    min_digits: int = 1
    max_digits: int = 2
    operators: list[str] = field(default_factory=lambda: ["+"])
    # Weight of the format reward (answer is digits then EOS); 0 disables it.
    format_reward: float = 0.0
    eval_size: int = 500
    # countdown: numbers per problem and their largest value.
    terms: int = 3
    max_number: int = 9
    # reverse: string lengths.
    min_length: int = 3
    max_length: int = 6
    # file: verl-schema .jsonl / .parquet files; val_files empty holds out 1 row in 10.
    train_files: list[str] = field(default_factory=list)
    val_files: list[str] = field(default_factory=list)
    # Prompts longer than this many tokens are dropped (counted in the log); 0: no limit.
    max_prompt_length: int = 0


@dataclass
class RolloutConfig:
    backend: str = "vllm"
    n: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 6
    # EOS is suppressed before this many tokens; benchmarks use it for fixed-length generation.
    min_new_tokens: int = 0
    # vLLM CPU KV-cache size in GiB (VLLM_CPU_KVCACHE_SPACE).
    kv_cache_gib: int = 1
    # Positions per sequence (prompt + response) the rollout engine plans for; 0: the
    # model's context length, at most 2048. A prompt that leaves fewer than max_new_tokens
    # positions is an error, never a silently shortened answer.
    max_model_len: int = 0
    # vLLM without torch.compile / CUDA graphs. null (auto): eager on CPU, where compiling
    # doubled engine start-up (36 s -> 17 s eager) for about 15% slower sampling of the
    # tiny model; compiled on GPU.
    enforce_eager: Optional[bool] = None
    # hf backend, Llama-family models (Llama, Qwen2): sample through siirl's grouped decoder
    # (prompt keys kept once per GRPO group, one weight gradient per weight for the fused
    # update; rollout/grouped_decode.py). false: through transformers' forward and KV cache.
    grouped_decode: bool = True
    # GPUs, vLLM: put the engine to sleep while the trainer runs (weights to CPU memory, KV
    # cache released; vLLM's sleep mode) and wake it to receive the new weights, so that
    # rollout and training share one device as colocated trainers do.
    sleep_during_update: bool = False
    # With LoRA (model.lora.rank > 0) and vLLM: what the engine receives after each update.
    # merged: the weights W + scaling * B A under the base model's names; adapters: only
    # the adapter files, which vLLM applies itself (its LoRA support; the base weights it
    # loaded stay as they are).
    lora_sync: str = "merged"


@dataclass
class AlgorithmConfig:
    adv_estimator: str = "grpo"
    norm_adv_by_std: bool = True
    policy_loss: str = "vanilla"
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.2
    # Dual-clip bound for negative advantages (vanilla loss); must be > 1.
    clip_ratio_c: float = 3.0
    loss_agg_mode: str = "token-mean"
    # KL to the reference as a loss term; 0 disables it (and, without kl_in_reward,
    # the reference model is never loaded).
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    # KL to the reference subtracted from the per-token rewards instead (REINFORCE++, PPO).
    kl_in_reward: bool = False
    kl_reward_coef: float = 0.001
    # fixed, or adaptive (steered towards kl_target over kl_horizon samples).
    kl_ctrl: str = "fixed"
    kl_target: float = 0.1
    kl_horizon: float = 10000.0
    entropy_coef: float = 0.0
    # Discount and GAE lambda for token-level estimators (gae, reinforce_plus_plus).
    gamma: float = 1.0
    lam: float = 1.0
    # Truncated importance sampling for the rollout engine's log-probs differing from the
    # trainer's: auto = on when rollout.backend is not the trainer's own model (vllm).
    rollout_correction: str = "auto"
    tis_cap: float = 2.0
    # DAPO: keep only groups with differing rewards, sampling fresh prompts for at most
    # this many rounds per step.
    dynamic_sampling: bool = False
    max_sampling_rounds: int = 3
    # DAPO's soft overlong penalty over the last overlong_buffer tokens before
    # rollout.max_new_tokens (0: off), down to -overlong_penalty_factor.
    overlong_buffer: int = 0
    overlong_penalty_factor: float = 1.0
    # The iteration's nodes in order: built-in names (pipeline.NODES: rollout, reward,
    # dynamic_sampling, remax_baseline, old_logprobs, ref_logprobs, values, advantage,
    # update, critic_update, sync) and user nodes `pkg.module:fn` / `file.py:fn` called as
    # fn(parts, batch, bag) (siirl_core/rank_parts.py, siirl_core/batch.py). Empty: the
    # algorithm's default graph.
    pipeline: list[str] = field(default_factory=list)


@dataclass
class TrainerConfig:
    steps: int = 100
    prompts_per_step: int = 32
    lr: float = 1e-4
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    # Optimizer steps in a row that may be skipped for a NaN or infinite loss or gradient
    # (a transient spike) before the run stops with NonFiniteUpdate; 0 stops at the first.
    max_skipped_steps: int = 3
    ppo_epochs: int = 1
    mini_batches: int = 1
    micro_batch_size: int = 64
    # Token budget per micro-batch (0: micro_batch_size rows each): rows are grouped by
    # length, longest first, and each micro-batch holds as many as fit rows x its longest
    # row's tokens; a row longer than the budget runs alone. Every pass trims the
    # micro-batch's all-padding columns. The loss and gradient do not depend on the split.
    max_tokens_per_micro_batch: int = 0
    # Run each micro-batch of the training and log-prob passes as one packed sequence of
    # its rows' real tokens (positions restart per row; transformers masks across rows,
    # FlashAttention-2 runs them as variable-length sequences): no compute on padding. On
    # the CPU attention over the packed sequence grows with its square: keep micro-batches
    # small (docs/benchmarks/padding.md).
    padding_free: bool = False
    # Back-propagate through the hf rollout's own forward passes instead of a second
    # forward pass (siirl_core/training/fused.py): auto = whenever allowed, on = an
    # error when not allowed, off = never.
    fused_update: str = "auto"
    # Rows whose advantages are all zero (GRPO groups whose samples scored alike) add exactly
    # nothing to the loss or its gradient in a one-step on-policy update without a KL or
    # entropy term: the update leaves them out of its forward and backward passes (and
    # drops the fused graph when that is cheaper). See docs/configuration.md.
    skip_zero_advantage: bool = True
    # Keep only each decoder layer's input in the forward pass of the update and
    # recompute the rest during the backward pass: activation memory of one layer instead
    # of all, for about one more forward pass of compute (the same gradients).
    gradient_checkpointing: bool = False
    # auto: bf16 on GPUs (DeepSpeed's bf16 mode), fp32 on CPUs. bf16 on a CPU: weights,
    # gradients and optimizer state stay fp32, the forward and backward passes (rollout,
    # log-probs, update) run in bf16 under torch.autocast, fast where the CPU has
    # AVX512-BF16 or AMX; vLLM then samples with bf16 weights. fp32: fp32 everywhere.
    precision: str = "auto"
    zero_stage: int = 2
    # GPUs: keep ZeRO's optimizer state (optimizer, stages 1-3) or also the parameters
    # (all, stage 3) in CPU memory, stepped there (DeepSpeed's offload_optimizer /
    # offload_param); none keeps everything on the GPU.
    offload: str = "none"
    seed: int = 0
    # Extra seed of the RL prompt stream (0: prompts depend on trainer.seed and the step
    # only). Retraining sets it from the date, so each night sees new prompts.
    data_seed: int = 0
    save_every: int = 25
    eval_every: int = 25
    # auto: continue from the newest complete checkpoint; never: start fresh.
    resume: str = "auto"
    # Prefect retries of a failed iteration or evaluation (each rebuilds the ranks and
    # restores the newest checkpoint first), waiting retry_delay_s, then twice that, ...
    retries: int = 3
    retry_delay_s: float = 5.0
    # Checkpoints kept (newest first); 0 keeps all.
    keep_checkpoints: int = 3


@dataclass
class CriticConfig:
    # The value model for algorithm.adv_estimator=gae (PPO): the policy's architecture
    # with a scalar head; the backbone starts from the policy unless init_from_policy=false.
    init_from_policy: bool = True
    lr: float = 1e-3
    # Clipped value loss: a value estimate moves at most this far per update.
    value_clip: float = 0.5


@dataclass
class SFTConfig:
    # At most this many steps; training stops earlier once greedy accuracy on held-back
    # demonstrations reaches target_accuracy (checked every check_every steps; 0: no target).
    # The target gives RL a similar start whatever the seed or CPU (siirl_core/sft.py).
    steps: int = 1000
    target_accuracy: float = 0.3
    check_every: int = 25
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0


@dataclass
class ClusterConfig:
    kind: str = "local"
    # Ranks: one Dask worker process each (local), or the workers to use at an address.
    n_workers: int = 1
    threads_per_worker: int = 1
    address: str = ""
    # torch.distributed collectives fail after this long, so a dead peer is an error, not a hang.
    collective_timeout_s: float = 120.0


@dataclass
class StorageConfig:
    # Where checkpoints go: a local folder or s3://bucket/prefix. Empty: runs/<run_name>.
    uri: str = ""
    # S3-compatible server (MinIO, moto, ...); credentials come from the AWS env/config chain.
    endpoint_url: str = ""
    # Attempts per checkpoint upload and manifest write, waiting retry_backoff_s, then
    # twice that, ... (at most a minute) between them: the defaults ride out ~30 s outages.
    retries: int = 6
    retry_backoff_s: float = 1.0
    # When a checkpoint save fails: stop the run, or log it and continue training.
    on_save_error: str = "stop"
    # Where warm-start models are cached, keyed by model and task.
    cache_dir: str = "runs/_cache"


@dataclass
class TrackingConfig:
    # Experiment tracking beside metrics.jsonl and TensorBoard (siirl_core/tracking.py).
    # MLflow (pip install 'siirl[tracking]'): the config as params, every step's metrics,
    # the evaluations before and after, and the final policy as an artifact.
    mlflow: bool = False
    # An MLflow tracking URI (http://host:5000, databricks, sqlite:///path.db). Empty: a
    # SQLite store shared by the runs under runs/ (sqlite:///runs/mlflow.db, artifacts in
    # runs/mlflow-artifacts); browse with `mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`.
    mlflow_uri: str = ""
    # The MLflow experiment, and the W&B project.
    experiment: str = "siirl"
    # Upload final_policy/ as an MLflow artifact (as large as the model).
    log_policy: bool = True
    # Weights & Biases (pip install 'siirl[tracking]'): the config, every step's metrics.
    # offline writes the run under the run folder's wandb/ (upload later with `wandb sync`);
    # online sends it as it goes (needs network and a W&B login).
    wandb: bool = False
    wandb_mode: str = "offline"


@dataclass
class RewardConfig:
    # A registered reward (exact_match, numeric, format, countdown, length_penalty), "auto"
    # (the task's own verifier), or a user function "pkg.module:fn" / "path/to/file.py:fn".
    function: str = "auto"
    # The function takes lists (one call per batch) instead of one sample per call.
    batched: bool = False
    # Extra keyword arguments for the function (e.g. pattern for `format`).
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Seconds per call (per batch when batched); a call past it scores error_score.
    timeout_s: float = 10.0
    # Calls of one batch run at once in this many threads, so that a function that hangs
    # costs one timeout per batch, not one per sample. 1: one call at a time (for a
    # function that is not thread-safe).
    threads: int = 8
    # When the function raises or times out: score the sample error_score and go on, or stop.
    on_error: str = "score"
    error_score: float = 0.0
    # Stop the run when more than this share of a batch's samples fail (raise, time out,
    # return a non-number or a non-finite score) in max_error_batches batches in a row.
    max_error_rate: float = 0.5
    max_error_batches: int = 3


@dataclass
class RetrainConfig:
    # RL iterations per retraining run (siirl-retrain), on prompts drawn for that date.
    iterations: int = 20
    # Promote the candidate only when its held-out accuracy beats the champion's by at least this much.
    margin: float = 0.01
    # YYYY-MM-DD that seeds the run's prompts; empty: the flow run's scheduled date.
    date: str = ""


@dataclass
class EvaluateConfig:
    # A checkpoint folder (local or s3://) or an HF model directory; empty: the newest
    # complete checkpoint in the run's storage.
    source: str = ""
    # Samples per held-out prompt, for mean@n and maj@n.
    n: int = 8
    pass_k: list[int] = field(default_factory=lambda: [1, 4, 8])
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    # Also compute these sampled metrics (per data source) at each training evaluation:
    # before training, every trainer.eval_every steps and at the end.
    during_training: bool = False


@dataclass
class AgentSpec:
    name: str = ""
    # Agents naming the same policy share its weights; "scripted": the environment plays it.
    policy: str = ""
    # The agent's prompt: {obs} (its observation), {history} (the messages it can see, in
    # order) and {<agent name>} (that agent's latest visible message).
    template: str = "{obs}"
    max_new_tokens: int = 1
    temperature: float = 1.0
    # The characters it may emit (its action vocabulary), masked in sampling and training
    # alike; empty: any token, ending at EOS.
    allowed: str = ""
    # Weight of the signalling bonus (agents/signalling.py): the mutual information between
    # the agent's prompt and its message's first token over each step's turns, added to
    # its policy's objective. For speakers whose team gets stuck on one message for two
    # observations; 0: off.
    signalling_bonus: float = 0.0


@dataclass
class PolicySpec:
    # base: a fresh model from the tiny factory over the environment's alphabet;
    # warm_start: the task's supervised warm start; otherwise an HF model directory.
    init: str = "base"
    size: str = "tiny"
    # 0: trainer.lr.
    lr: float = 0.0
    # Standard deviation of a base policy's initial weights (transformers'
    # initializer_range). Larger than the usual 0.02, a fresh speaker already prefers a
    # different message for each observation, so agents learning a code from scratch
    # start apart instead of sharing one message between observations.
    init_std: float = 0.02


@dataclass
class AgentsConfig:
    # A registered environment (siirl_core.agents.envs); empty: single-agent training.
    env: str = ""
    # Environment options (e.g. symbols for the referential game, the opponent's mix).
    env_args: dict[str, Any] = field(default_factory=dict)
    agents: list[AgentSpec] = field(default_factory=list)
    # policy id -> PolicySpec fields (plain dicts, so `+agents.policies.<id>.init=base`
    # works on the command line; checked against PolicySpec by the validation).
    policies: dict[str, Any] = field(default_factory=dict)

    def policy(self, pid: str) -> PolicySpec:
        return PolicySpec(**(self.policies.get(pid) or {}))

    def trained_policies(self) -> list[str]:
        """Policy ids in order of first use, scripted players excluded."""
        out: list[str] = []
        for a in self.agents:
            if a.policy != "scripted" and a.policy not in out:
                out.append(a.policy)
        return out

    def turns_per_episode(self, pid: str) -> int:
        """How many turns policy `pid` takes in one episode (its agents' turns in the schedule)."""
        return (self.rounds if self.graph == "rounds" else 1) * sum(a.policy == pid for a in self.agents)
    # chain: agents in order, each seeing the earlier messages; rounds: the chain `rounds`
    # times (debate); parallel: all but the last see only their observation, the last
    # (the aggregator) sees them all.
    graph: str = "chain"
    rounds: int = 1
    # per_agent: each agent's reward normalised over the episodes of the same start;
    # team: the team reward's advantage for every agent.
    credit: str = "per_agent"
    # simultaneous: every policy updates every step; alternating: one policy per step, in turn.
    schedule: str = "simultaneous"
    # Episodes per start for evaluation are greedy; this many held-out starts.
    eval_episodes: int = 200


SINGLE_POLICY = "policy"  # the policy id of a single-agent run


@dataclass
class SiirlConfig:
    run_name: str = "default"
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    agents: AgentsConfig = field(default_factory=AgentsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    @property
    def run_dir(self) -> str:
        """Local folder for logs, metrics and TensorBoard (checkpoints too, unless remote)."""
        uri = self.storage.uri
        return uri if uri and "://" not in uri else os.path.join("runs", self.run_name)

    @property
    def checkpoint_root(self) -> str:
        return self.storage.uri or self.run_dir

    # Derived numbers: computed here once, used by the checks and by every rank.
    def samples_per_rank(self, world_size: int | None = None) -> int:
        """Samples each rank generates and trains on per step: its share of the prompts
        (trainer.prompts_per_step / world size, cluster.n_workers by default) times rollout.n."""
        return self.trainer.prompts_per_step // max(1, world_size or self.cluster.n_workers) * self.rollout.n

    def grad_accum(self, world_size: int | None = None) -> int:
        """Micro-batches per optimizer step on one rank (DeepSpeed's gradient accumulation)."""
        t = self.trainer
        return math.ceil(self.samples_per_rank(world_size) // t.mini_batches / t.micro_batch_size)

    def policy_ids(self) -> list[str]:
        """The policies a rank trains: the single-agent run's one, or each agent policy."""
        return self.agents.trained_policies() if self.agents.env else [SINGLE_POLICY]

    def policy_lr(self, pid: str) -> float:
        """A policy's learning rate: an agent policy's own, or trainer.lr."""
        return (self.agents.policy(pid).lr if self.agents.env else 0.0) or self.trainer.lr

    def policy_optimizer_steps(self, pid: str) -> int:
        """Optimizer steps policy `pid` takes over the run (the LR schedule's length)."""
        t = self.trainer
        if not self.agents.env:
            return t.steps * t.ppo_epochs * t.mini_batches
        if self.agents.schedule == "simultaneous":
            return t.steps
        return math.ceil(t.steps / len(self.agents.trained_policies()))

    def policy_grad_accum(self, pid: str, world_size: int | None = None) -> int:
        """Micro-batches per optimizer step of policy `pid` on one rank: an agent policy
        trains on every one of its turns in a step at once."""
        if not self.agents.env:
            return self.grad_accum(world_size)
        rows = self.samples_per_rank(world_size) * self.agents.turns_per_episode(pid)
        return math.ceil(rows / self.trainer.micro_batch_size)

    def derived(self, world_size: int | None = None) -> dict:
        """The numbers the ranks compute from the configuration, for the log at start."""
        ws = max(1, world_size or self.cluster.n_workers)
        t = self.trainer
        out = {"world_size": ws, "prompts_per_rank": t.prompts_per_step // ws,
               "samples_per_rank": self.samples_per_rank(ws), "optimizer_steps_per_iteration": t.ppo_epochs
               * t.mini_batches}
        if self.agents.env:
            out["policy_lr"] = {pid: self.policy_lr(pid) for pid in self.agents.trained_policies()}
        else:
            out.update(grad_accum=self.grad_accum(ws), lr=t.lr)
        return out


def build_config(composed: DictConfig | dict) -> SiirlConfig:
    """Typed config from a composed Hydra/OmegaConf tree: unknown keys and wrong types
    fail here; the cross-field rules are siirl_core.config_checks.validate's."""
    schema = OmegaConf.structured(SiirlConfig)
    try:
        merged = OmegaConf.merge(schema, composed)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(explain_omegaconf_error(err)) from None


def known_keys(section: str) -> list[str]:
    node = OmegaConf.structured(SiirlConfig)
    sub = OmegaConf.select(node, section) if section else node
    return sorted(sub.keys()) if sub is not None and OmegaConf.is_dict(sub) else []


def explain_omegaconf_error(err: OmegaConfBaseException) -> str:
    """One line naming the key, what was wrong, and (for unknown keys) what exists."""
    key = getattr(err, "full_key", None) or "?"
    first = str(getattr(err, "msg", err)).splitlines()[0]
    hint = ""
    if "not in" in first:
        section = key.rsplit(".", 1)[0] if "." in key else ""
        hint = f"; known keys under {section or 'the top level'}: {known_keys(section)}"
    return f"bad config key {key!r}: {first}{hint}"


def to_dict(cfg: SiirlConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def from_dict(d: dict) -> SiirlConfig:
    """The config a rank receives: to_dict of one already validated by compose_config.
    Types are checked again; the cross-field checks are not, since they load the data
    files and user code that the rank is about to load anyway."""
    return build_config(OmegaConf.create(d))
