"""The config's checks, run by `compose_config` before any model is loaded: the schema's
own rules here, then the rules each part of the engine registers beside its code
(config_rules.py: fused update, task and data files, reward function, pipeline order,
agents). Each error names the key and what is allowed."""
from __future__ import annotations

import datetime
import os

from siirl_core.config import ConfigError, SiirlConfig
from siirl_core.config_rules import check_registered
from siirl_core.config_rules import one_of as _one_of
from siirl_core.config_rules import positive as _positive

# Any one of these is how an HF tokenizer is saved (fast, slow BPE, SentencePiece).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def _validate_offload(cfg) -> None:
    """trainer.offload and rollout.sleep_during_update (GPU memory features; a rank without
    a GPU refuses them when it builds its engines)."""
    t = cfg.trainer
    _one_of("trainer.offload", t.offload, {"none", "optimizer", "all"})
    _one_of("trainer.precision", t.precision, {"auto", "fp32", "bf16"})
    if t.offload == "optimizer" and t.zero_stage == 0:
        raise ConfigError("trainer.offload=optimizer moves ZeRO's optimizer state to CPU memory: it needs "
                          "trainer.zero_stage 1, 2 or 3 (got 0)")
    if t.offload == "all" and t.zero_stage != 3:
        raise ConfigError(f"trainer.offload=all also offloads the parameters, which only ZeRO-3 partitions: set "
                          f"trainer.zero_stage=3 (got {t.zero_stage}) or trainer.offload=optimizer")
    if cfg.rollout.sleep_during_update and cfg.rollout.backend != "vllm":
        raise ConfigError(f"rollout.sleep_during_update puts vLLM to sleep during the update; rollout.backend="
                          f"{cfg.rollout.backend} samples with the trainer's own weights, which the update needs")


def validate(cfg: SiirlConfig) -> SiirlConfig:
    """Every rule, checked before any model is loaded."""
    from siirl_core.algorithms import ADVANTAGE_ESTIMATORS, KL_ESTIMATORS, LOSS_AGG_MODES, POLICY_LOSSES
    from siirl_core.models.factory import ARCHITECTURES, SIZES
    from siirl_core.models.shapes import REAL_SHAPES

    _one_of("rollout.backend", cfg.rollout.backend, {"vllm", "hf"})
    _one_of("algorithm.adv_estimator", cfg.algorithm.adv_estimator, ADVANTAGE_ESTIMATORS.names())
    _one_of("algorithm.policy_loss", cfg.algorithm.policy_loss, POLICY_LOSSES.names())
    _one_of("algorithm.loss_agg_mode", cfg.algorithm.loss_agg_mode, LOSS_AGG_MODES.names())
    _one_of("algorithm.kl_estimator", cfg.algorithm.kl_estimator, KL_ESTIMATORS.names())
    _one_of("trainer.zero_stage", cfg.trainer.zero_stage, {0, 1, 2, 3})
    _validate_algorithm(cfg)
    _one_of("trainer.lr_schedule", cfg.trainer.lr_schedule, {"constant", "cosine", "linear"})
    _one_of("cluster.kind", cfg.cluster.kind, {"local", "local_cuda", "address"})
    if cfg.cluster.kind == "address" and not cfg.cluster.address:
        raise ConfigError("cluster=address needs cluster.address=tcp://host:port (the Dask scheduler's address)")
    _one_of("storage.on_save_error", cfg.storage.on_save_error, {"stop", "continue"})
    if "://" in cfg.storage.uri and not cfg.storage.uri.startswith(("s3://", "file://", "memory://")):
        raise ConfigError(f"storage.uri={cfg.storage.uri!r}: expected a local path or s3://bucket/prefix")
    if cfg.storage.retries < 1:
        raise ConfigError(f"storage.retries={cfg.storage.retries}: expected at least 1 attempt")
    _one_of("model.architecture", cfg.model.architecture, ARCHITECTURES)
    if not cfg.model.path:
        _one_of("model.size", cfg.model.size, [*SIZES, *REAL_SHAPES])
    elif not os.path.isfile(os.path.join(cfg.model.path, "config.json")):
        raise ConfigError(
            f"model.path={cfg.model.path!r} is not an HF model directory "
            "(expected a folder with config.json and tokenizer files)")
    elif not any(os.path.isfile(os.path.join(cfg.model.path, name)) for name in TOKENIZER_FILES):
        raise ConfigError(f"model.path={cfg.model.path!r} has no tokenizer (expected one of {', '.join(TOKENIZER_FILES)} "
                          "beside config.json; save the tokenizer with the model)")
    for key in ("rollout.n", "rollout.max_new_tokens", "trainer.steps", "trainer.prompts_per_step",
                "trainer.ppo_epochs", "trainer.mini_batches", "trainer.micro_batch_size",
                "sft.batch_size", "sft.check_every", "cluster.n_workers", "cluster.threads_per_worker",
                "task.eval_size", "rollout.kv_cache_gib"):
        section, name = key.split(".")
        _positive(key, getattr(getattr(cfg, section), name))
    for key in ("trainer.lr", "sft.lr", "rollout.temperature"):
        section, name = key.split(".")
        _positive(key, getattr(getattr(cfg, section), name))
    for key in ("algorithm.kl_coef", "algorithm.clip_ratio_low", "algorithm.clip_ratio_high",
                "trainer.save_every", "trainer.eval_every", "trainer.warmup_steps", "sft.steps", "trainer.grad_clip",
                "trainer.retries", "trainer.retry_delay_s", "storage.retry_backoff_s", "trainer.max_skipped_steps",
                "trainer.max_tokens_per_micro_batch"):
        section, name = key.split(".")
        _positive(key, getattr(getattr(cfg, section), name), zero_ok=True)
    if not 0 <= cfg.sft.target_accuracy <= 1:
        raise ConfigError(f"sft.target_accuracy={cfg.sft.target_accuracy!r} is not allowed; expected 0 <= target "
                          "<= 1 (0: train all sft.steps)")
    if not 0 < cfg.rollout.top_p <= 1:
        raise ConfigError(f"rollout.top_p={cfg.rollout.top_p!r} is not allowed; expected 0 < top_p <= 1")
    if cfg.rollout.n < 2 and cfg.algorithm.adv_estimator in ("grpo", "dr_grpo"):
        raise ConfigError("rollout.n must be >= 2 for group-relative advantages (GRPO)")
    if cfg.trainer.prompts_per_step % cfg.cluster.n_workers:
        raise ConfigError(
            f"trainer.prompts_per_step={cfg.trainer.prompts_per_step} must be divisible by "
            f"cluster.n_workers={cfg.cluster.n_workers} (each rank takes an equal shard)")
    per_rank = cfg.samples_per_rank()
    if per_rank % cfg.trainer.mini_batches:
        raise ConfigError(
            f"trainer.mini_batches={cfg.trainer.mini_batches} must divide the samples per rank "
            f"({per_rank} = prompts_per_step / n_workers * rollout.n)")
    if cfg.trainer.zero_stage == 3 and cfg.rollout.backend == "hf" and cfg.cluster.n_workers > 1:
        raise ConfigError("rollout.backend=hf with trainer.zero_stage=3 needs cluster.n_workers=1: "
                          "sharded parameters make every generation step a collective; use rollout=vllm")
    _validate_offload(cfg)
    _positive("model.bpe_vocab_size", cfg.model.bpe_vocab_size)
    _validate_lora(cfg)
    _validate_memory(cfg)
    _positive("rollout.max_model_len", cfg.rollout.max_model_len, zero_ok=True)
    _validate_context(cfg)
    _validate_retrain_and_evaluate(cfg)
    resume = cfg.trainer.resume
    if resume not in ("auto", "never") and not resume.isdigit() and "://" not in resume and not os.path.isdir(resume):
        raise ConfigError(f"trainer.resume={resume!r} is not allowed; expected auto, never, a step number, "
                          "or a checkpoint folder (local path or s3:// URI)")
    check_registered(cfg)
    return cfg


def _validate_memory(cfg: SiirlConfig) -> None:
    """A model too large for this machine is refused before anything loads."""
    from siirl_core.memory_estimate import check_fits

    try:
        problem = check_fits(cfg)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.path={cfg.model.path!r}: cannot read the model's configuration ({err})") from None
    if problem:
        raise ConfigError(problem)


def _validate_lora(cfg: SiirlConfig) -> None:
    lora = cfg.model.lora
    _positive("model.lora.rank", lora.rank, zero_ok=True)
    _one_of("rollout.lora_sync", cfg.rollout.lora_sync, {"merged", "adapters"})
    if cfg.rollout.lora_sync == "adapters" and not (lora.rank and cfg.rollout.backend == "vllm"):
        raise ConfigError(f"rollout.lora_sync=adapters hands vLLM the LoRA adapters; it needs model.lora.rank > 0 "
                          f"(got {lora.rank}) and rollout.backend=vllm (got {cfg.rollout.backend})")
    if cfg.rollout.lora_sync == "adapters" and cfg.agents.env:
        raise ConfigError("rollout.lora_sync=adapters is for vLLM, and multi-agent policies sample with the hf "
                          "engine over their own modules (nothing to sync): leave rollout.lora_sync=merged")
    if not lora.rank:
        return
    _positive("model.lora.alpha", lora.alpha)
    if not 0 <= lora.dropout < 1:
        raise ConfigError(f"model.lora.dropout={lora.dropout}: expected a probability in [0, 1)")
    if not lora.target_modules:
        raise ConfigError("model.lora.target_modules is empty: name the linear layers that get adapters "
                          "(e.g. [q_proj,v_proj])")


def _validate_context(cfg: SiirlConfig) -> None:
    """A response must fit the model's context with room for a prompt."""
    from siirl_core.models.factory import model_positions
    from siirl_core.rollout.engines import DEFAULT_MAX_MODEL_LEN, model_positions_of, rollout_positions

    if cfg.model.path:  # a config.json without max_position_embeddings: the rollout's default
        positions = model_positions_of(cfg.model.path) or DEFAULT_MAX_MODEL_LEN
    else:
        positions = model_positions(cfg.model.size)
    where = f"model.path={cfg.model.path!r}" if cfg.model.path else f"model.size={cfg.model.size}"
    if cfg.rollout.max_model_len > positions:
        raise ConfigError(f"rollout.max_model_len={cfg.rollout.max_model_len} is beyond the model's context of "
                          f"{positions} positions ({where})")
    room = rollout_positions(cfg.rollout.max_model_len, positions)
    if cfg.rollout.max_new_tokens >= room:
        raise ConfigError(f"rollout.max_new_tokens={cfg.rollout.max_new_tokens} leaves no room for a prompt in "
                          f"{room} positions ({where}, rollout.max_model_len={cfg.rollout.max_model_len}); "
                          "use a model with a longer context or fewer new tokens")


def _validate_algorithm(cfg: SiirlConfig) -> None:
    a = cfg.algorithm
    _one_of("algorithm.kl_ctrl", a.kl_ctrl, {"fixed", "adaptive"})
    _one_of("algorithm.rollout_correction", a.rollout_correction, {"auto", "on", "off"})
    if a.clip_ratio_c <= 1:
        raise ConfigError(f"algorithm.clip_ratio_c={a.clip_ratio_c}: the dual-clip bound must be > 1")
    _positive("algorithm.max_sampling_rounds", a.max_sampling_rounds)
    if not 0 <= cfg.rollout.min_new_tokens <= cfg.rollout.max_new_tokens:
        raise ConfigError(f"rollout.min_new_tokens={cfg.rollout.min_new_tokens}: expected 0 up to "
                          f"rollout.max_new_tokens={cfg.rollout.max_new_tokens}")
    if not 0 <= a.overlong_buffer <= cfg.rollout.max_new_tokens:
        raise ConfigError(f"algorithm.overlong_buffer={a.overlong_buffer}: expected 0 (off) up to "
                          f"rollout.max_new_tokens={cfg.rollout.max_new_tokens}")
    for key in ("tis_cap", "kl_target", "kl_horizon"):
        _positive(f"algorithm.{key}", getattr(a, key))
    for key in ("gamma", "lam"):
        if not 0 <= getattr(a, key) <= 1:
            raise ConfigError(f"algorithm.{key}={getattr(a, key)}: expected a number in [0, 1]")
    if a.adv_estimator in ("rloo", "reinforce_plus_plus_baseline") and cfg.rollout.n < 2:
        raise ConfigError(f"rollout.n must be >= 2 for algorithm.adv_estimator={a.adv_estimator} (group baselines)")
    _positive("critic.lr", cfg.critic.lr)
    _positive("critic.value_clip", cfg.critic.value_clip)


def make_run_dir(cfg: SiirlConfig) -> str:
    """Create the run folder (logs, metrics; checkpoints too with local storage); a folder
    that cannot be made is a configuration error naming storage.uri."""
    try:
        os.makedirs(cfg.run_dir, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"storage.uri={cfg.storage.uri!r}: cannot create the run folder {cfg.run_dir!r} "
                          f"({err.strerror or err}); expected a folder this user can write") from None
    return cfg.run_dir


def single_policy_only(cfg: SiirlConfig, command: str) -> None:
    """Retraining and the evaluation flow work on one policy; say so before starting."""
    if cfg.agents.env:
        raise ConfigError(f"agents.env={cfg.agents.env!r}: `siirl {command}` takes single-policy runs; "
                          "a multi-agent run evaluates itself during training (val/ metrics)")


def _validate_retrain_and_evaluate(cfg: SiirlConfig) -> None:
    _positive("retrain.iterations", cfg.retrain.iterations)
    _positive("retrain.margin", cfg.retrain.margin, zero_ok=True)
    if cfg.retrain.date:
        try:
            datetime.date.fromisoformat(cfg.retrain.date)
        except ValueError:
            raise ConfigError(f"retrain.date={cfg.retrain.date!r}: expected a date as YYYY-MM-DD") from None
    ev = cfg.evaluate
    _positive("evaluate.n", ev.n)
    _positive("evaluate.temperature", ev.temperature)
    if not 0 < ev.top_p <= 1:
        raise ConfigError(f"evaluate.top_p={ev.top_p!r} is not allowed; expected 0 < top_p <= 1")
    bad = [k for k in ev.pass_k if not 1 <= k <= ev.n]
    if bad:
        raise ConfigError(f"evaluate.pass_k={list(ev.pass_k)}: every k must be in 1..evaluate.n={ev.n}; got {bad}")
    src = ev.source
    if src and "://" not in src and not any(os.path.isfile(os.path.join(src, f)) for f in ("config.json",
                                                                                           "manifest.json")):
        raise ConfigError(f"evaluate.source={src!r} is neither a checkpoint folder (with manifest.json) "
                          "nor an HF model directory (with config.json)")
