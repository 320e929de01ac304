"""vLLM in-process rollout (the CPU build on machines without GPUs)."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Callable, Iterable

import torch

from siirl_core.rollout.base import RolloutBatch, SamplingConfig, check_room, strip_eos


# The adapter ranks vLLM accepts as max_lora_rank.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_lora_rank(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds adapters of `rank`."""
    fits = [r for r in VLLM_LORA_RANKS if r >= rank]
    if not fits:
        raise ValueError(f"model.lora.rank={rank} is above vLLM's largest adapter rank ({VLLM_LORA_RANKS[-1]})")
    return fits[0]


class VLLMRollout:
    def __init__(self, model_path: str, eos_id: int, seed: int = 0, dtype: str = "float32",
                 max_model_len: int = 128, kv_cache_gib: int = 1, gpu_memory_utilization: float = 0.3,
                 cpu_cores: str | None = None, enforce_eager: bool | None = None, sleep_during_update: bool = False,
                 lora_rank: int = 0):
        if sleep_during_update and not torch.cuda.is_available():
            raise ValueError("rollout.sleep_during_update frees the GPU memory vLLM holds while the trainer runs; "
                             "this rank has no GPU (vLLM's sleep mode needs CUDA): set it to false")
        # In-process engine: no extra processes inside a Dask worker, and direct
        # access to the model runner for weight sync.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
        if cpu_cores:
            # vLLM's CPU backend pins its OpenMP threads; ranks on one machine get disjoint cores.
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_cores
        # vLLM logs every in-place weight reload (and a harmless rotary-embedding
        # warning with it); errors still show. Override with VLLM_LOGGING_LEVEL.
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        verbose = os.environ.get("SIIRL_VERBOSE", "") not in ("", "0")  # `siirl ... --verbose` (flows/quiet.py)
        if not verbose:
            # The CPU build says at import, before its logging is set up, that its Triton
            # has no CPU backend: nothing a user can act on.
            logging.getLogger("vllm.triton_utils.importing").setLevel(logging.ERROR)
        from vllm import LLM

        kwargs = dict(model=model_path, dtype=dtype, seed=seed, max_model_len=max_model_len,
                      enforce_eager=not torch.cuda.is_available() if enforce_eager is None else enforce_eager)
        if torch.cuda.is_available():
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        kwargs["use_tqdm_on_load"] = verbose  # its weight-loading bar
        if sleep_during_update:
            kwargs["enable_sleep_mode"] = True
        if lora_rank:  # sample through the adapters the trainer hands over (sync_adapter)
            kwargs.update(enable_lora=True, max_lora_rank=vllm_lora_rank(lora_rank), max_loras=1)
        self.takes_adapters = bool(lora_rank)
        self.lora_request = None  # the latest adapters; None: the base weights alone
        self._adapter_root = tempfile.mkdtemp(prefix="siirl-vllm-adapters-") if lora_rank else ""
        self.sleeps, self.asleep = sleep_during_update, False
        self.llm = LLM(**kwargs)
        self.eos_id = eos_id
        self.max_model_len = max_model_len

    def release(self) -> None:
        """Before the update: with rollout.sleep_during_update, weights to CPU memory and the
        KV cache freed, until the next weight sync or generation."""
        if self.sleeps and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def _awake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig, seed: int) -> RolloutBatch:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self._awake()
        check_room(prompt_ids, sampling.max_new_tokens, self.max_model_len)
        # One seed per prompt: samples depend only on (seed, prompt position, weights),
        # so a resumed run replays exactly what an uninterrupted one sampled.
        params = [
            SamplingParams(
                n=sampling.n, max_tokens=sampling.max_new_tokens, min_tokens=sampling.min_new_tokens, logprobs=0,
                detokenize=False,
                temperature=0.0 if sampling.greedy else sampling.temperature,
                top_p=1.0 if sampling.greedy else sampling.top_p,
                seed=None if sampling.greedy else seed * 1_000_003 + i,
                allowed_token_ids=list(sampling.allowed_token_ids) if sampling.allowed_token_ids else None,
            )
            for i in range(len(prompt_ids))
        ]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompt_ids], params,
                                 use_tqdm=False, lora_request=self.lora_request)
        batch = RolloutBatch([], [], [], [], [])
        for i, out in enumerate(outs):
            for comp in out.outputs:
                ids, finished = strip_eos(list(comp.token_ids), self.eos_id)
                lps = [next(iter(d.values())).logprob if len(d) == 1 else d[t].logprob
                       for t, d in zip(ids, comp.logprobs)]
                batch.prompt_ids.append(list(prompt_ids[i]))
                batch.response_ids.append(ids)
                batch.response_logprobs.append(lps)
                batch.finished.append(finished)
                batch.group_index.append(i)
        return batch

    def sync_adapter(self, write: Callable[[str], None]) -> None:
        """New adapters: `write(folder)` saves them in peft's format; vLLM loads them on the
        next generation, under a new id (ids are how it caches adapters)."""
        version = (self.lora_request.lora_int_id if self.lora_request else 0) + 1
        folder = os.path.join(self._adapter_root, f"v{version}")
        write(folder)
        from vllm.lora.request import LoRARequest

        self.lora_request = LoRARequest(f"policy-v{version}", version, folder)
        self.llm.reset_prefix_cache()
        shutil.rmtree(os.path.join(self._adapter_root, f"v{version - 1}"), ignore_errors=True)

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        self._awake()
        runner = self.llm.llm_engine.model_executor.driver_worker.worker.model_runner
        runner.reload_weights(weights_iterator=iter(named_tensors))
        # Cached prefixes hold KV computed with the old weights.
        self.llm.reset_prefix_cache()
